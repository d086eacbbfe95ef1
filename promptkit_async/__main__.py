"""``python -m promptkit_async``: start the chatbot (the same as ``promptkit-chat``)."""

from .cli import main

raise SystemExit(main())
