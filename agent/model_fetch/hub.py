"""Sizes and hashes from the Hugging Face hub for the files a manifest leaves unpinned.

huggingface_hub's ``HfApi(endpoint).model_info(repo, revision=rev, files_metadata=True)`` asks
``GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true``; each sibling has ``size``, ``blob_id``
and, for an LFS file, ``lfs.sha256``. An LFS file is checked against that sha256, a plain git file
against its git blob id. A file with no hash from anywhere is refused. The endpoint is the one the
manifest's URLs were filled with (manifest.hf_endpoint: our variable, else ``HF_ENDPOINT``), passed
on each call: huggingface_hub itself reads ``HF_ENDPOINT`` only once, at import.

huggingface_hub is imported here, inside the look-up: a fully pinned manifest (the shipped one)
never needs it, and no other command pays for its import.
"""

from __future__ import annotations

import ssl
import urllib.parse

from agent import __version__
from agent.errors import HubUnreachableError, ModelFetchError, ModelMismatchError
from agent.model_fetch.download import Net, Transient
from agent.model_fetch.manifest import SHA256_RE, FileSpec

_SHA1_LEN = 40


def fill_from_hub(specs: list[FileSpec], endpoint: str, net: Net, say) -> None:
    """Ask the hub for the size and hash of every file the manifest does not fully describe."""
    wanted: dict[tuple[str, str], list[FileSpec]] = {}
    for spec in specs:
        if spec.size is None or spec.sha256 is None:
            if spec.hf is None:  # load_manifest guarantees this cannot happen for non-hub URLs
                raise ModelFetchError(f"{spec.name}: no size/sha256 in the manifest and {spec.url} is not a hub URL")
            wanted.setdefault(spec.hf[:2], []).append(spec)
    for (repo, rev), group in wanted.items():
        api = f"{endpoint}/api/models/{repo}/revision/{urllib.parse.quote(rev, safe='')}?blobs=true"
        say(f"asking {endpoint} for the sizes and hashes of {repo}@{rev}")
        info = net.attempt(lambda: _model_info(endpoint, repo, rev, net.timeout, api), f"file list of {repo}@{rev}")
        if _is_commit(rev) and isinstance(info.sha, str) and info.sha != rev:
            raise ModelFetchError(f"{api} describes commit {info.sha}, not the pinned revision {rev}")
        by_name = {s.rfilename: s for s in info.siblings or []}
        for spec in group:
            sibling = by_name.get(spec.hf[2])
            if sibling is None:
                raise ModelFetchError(f"{spec.name}: {repo}@{rev} has no file {spec.hf[2]!r} ({api})")
            _fill(spec, sibling, api)


def _fill(spec: FileSpec, sibling, api: str) -> None:
    lfs = sibling.lfs
    hub_size = lfs.size if lfs else sibling.size
    hub_sha = lfs.sha256.lower() if lfs and isinstance(lfs.sha256, str) else None
    if isinstance(hub_size, int) and not isinstance(hub_size, bool):
        if spec.size is not None and spec.size != hub_size:
            raise ModelMismatchError(f"{spec.name}: the manifest says {spec.size} bytes but {api} says {hub_size}")
        spec.size = hub_size
    if hub_sha is not None and SHA256_RE.match(hub_sha):
        if spec.sha256 is not None and spec.sha256 != hub_sha:
            raise ModelMismatchError(f"{spec.name}: the manifest says sha256 {spec.sha256} but {api} says {hub_sha}")
        spec.sha256 = hub_sha
    elif spec.sha256 is None:
        blob = sibling.blob_id
        if isinstance(blob, str) and _is_commit(blob.lower()):  # a git blob id is a sha1 like a commit id
            spec.git_blob = blob.lower()
    if spec.size is None:
        raise ModelFetchError(f"{spec.name}: neither the manifest nor {api} gives its size; refusing")
    if spec.sha256 is None and spec.git_blob is None:
        raise ModelFetchError(f"{spec.name}: neither the manifest nor {api} gives a hash; refusing")


def _is_commit(value: str) -> bool:
    return len(value) == _SHA1_LEN and all(c in "0123456789abcdef" for c in value)


def _model_info(endpoint: str, repo: str, rev: str, timeout: float, api: str):
    """One look-up; Transient for what a retry can mend, ModelFetchError for what it cannot."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    # No token: the downloads themselves send none, so a look-up must not see more than they can fetch.
    hub = HfApi(endpoint=endpoint, token=False, library_name="stt-agent", library_version=__version__)
    try:
        return hub.model_info(repo, revision=rev, files_metadata=True, timeout=timeout)
    except OfflineModeIsEnabled:
        raise HubUnreachableError(f"{api}: HF_HUB_OFFLINE is set, so huggingface_hub makes no request; unset it "
                                  "or download the files by hand (models/README.md, \"Manual download\")") from None
    except HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code is None or code >= 500 or code in (408, 425, 429):
            raise Transient(f"HTTP {code} from {api}") from None
        reason = {401: "unauthorized", 403: "forbidden", 404: "not found"}.get(code, "refused")
        raise ModelFetchError(f"HTTP {code} ({reason}) for {api}") from None
    except httpx2.TransportError as exc:
        if _tls_verification_failed(exc):
            raise ModelFetchError(f"{api}: TLS certificate verification failed: {exc}") from None
        raise Transient(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    except (ValueError, KeyError, TypeError) as exc:  # an answer that is not the hub's model-info JSON
        raise ModelFetchError(f"{api}: unexpected answer ({type(exc).__name__}: {exc})") from None


def _tls_verification_failed(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
