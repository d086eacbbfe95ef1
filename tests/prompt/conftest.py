"""Fixtures for the prompt tests: tiktoken's own encodings, built offline."""

from __future__ import annotations

import hashlib
import shutil
from importlib import resources

import pytest
import tiktoken

URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}


def packaged(name: str) -> str:
    """Path of the encoding file shipped in the package."""
    ref = resources.files("promptkit_async.prompt").joinpath("_encodings", f"{name}.tiktoken")
    return str(ref)


@pytest.fixture(scope="session")
def shipped() -> dict[str, tuple[str, str]]:
    """Encoding name -> (tiktoken's download URL, path of the shipped file)."""
    return {name: (url, packaged(name)) for name, url in URLS.items()}


@pytest.fixture(scope="session")
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TIKTOKEN_CACHE_DIR holding the shipped files under tiktoken's cache names."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, url in URLS.items():
        shutil.copyfile(packaged(name), cache / hashlib.sha1(url.encode()).hexdigest())
    return str(cache)


@pytest.fixture(scope="session")
def reference(tiktoken_cache: str) -> dict[str, tiktoken.Encoding]:
    """tiktoken's own Encoding objects (tiktoken_ext.openai_public), loaded offline."""
    with pytest.MonkeyPatch.context() as mp:
        # tiktoken finds the files in its cache and never goes to the network.
        mp.setenv("TIKTOKEN_CACHE_DIR", tiktoken_cache)
        return {name: tiktoken.get_encoding(name) for name in URLS}
