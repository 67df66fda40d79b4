"""`triton` backend: tile batches go to a Triton Inference Server over gRPC; this process only reads and stitches.

The server serves a model repository written by `slidefuse triton BUNDLE --out REPO` (uint8 tiles `[B, T, T, 3]`
in, float32 probabilities `[B, C, T, T]` out, batch axis dynamic). On load the backend checks, against the
bundle given to it (`--model`), that the server is live, the model is ready, its input and output match the
manifest (names, types, tile size, classes), and that the model's `slidefuse.bundle_digest` parameter is this
bundle's digest, so masks are never made with another model than the one recorded in report.json.

Batches larger than the model's `max_batch_size` are sent in chunks. With shared memory (`shm`: `auto` turns it
on when the server's address is this machine), tiles and probabilities go through two POSIX shared-memory
regions registered with the server instead of through the gRPC message.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from slidefuse.errors import BackendUnavailable, BundleError, MissingExtra, UsageError, one_line
from slidefuse.runtime.backends.base import Backend, BackendInfo, DeviceKind, unavailable
from slidefuse.runtime.backends.options import BackendOptions
from slidefuse.runtime.bundle import Bundle

log = logging.getLogger(__name__)

URL_ENV = "SLIDEFUSE_TRITON_URL"  # default server address when the `url` option is not given
DIGEST_KEY = "slidefuse.bundle_digest"  # the model parameter written by `slidefuse triton`
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def _default_url() -> str:
    return os.environ.get(URL_ENV) or "localhost:8001"


@dataclass(frozen=True)
class TritonOptions(BackendOptions):
    """Options of the `triton` backend."""

    url: str = field(default_factory=_default_url)  # gRPC HOST:PORT (default $SLIDEFUSE_TRITON_URL or localhost:8001)
    model: str = "slidefuse"  # model name in the server's repository
    version: str = ""  # model version; '' = the one the server serves
    shm: Literal["auto", "on", "off"] = "auto"  # system shared memory for tiles/probabilities; auto: on if local
    timeout_s: float = 300.0  # per request, in seconds
    check_digest: bool = True  # refuse a served model made from another bundle (slidefuse.bundle_digest)

    def __post_init__(self) -> None:
        super().__post_init__()
        host, sep, port = self.url.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise UsageError(f"option url={self.url!r}: expected HOST:PORT of Triton's gRPC endpoint, "
                             "e.g. localhost:8001")
        if self.timeout_s <= 0:
            raise UsageError(f"option timeout_s={self.timeout_s!r}: expected a positive number of seconds")

    @property
    def local(self) -> bool:
        """Whether the server's address is this machine (shared memory can work)."""
        return self.url.rpartition(":")[0] in _LOCAL_HOSTS


@dataclass
class _Shm:
    """Two system shared-memory regions registered with the server: tiles in, probabilities out."""

    in_name: str
    out_name: str
    in_handle: Any
    out_handle: Any
    in_bytes: int
    out_bytes: int


class TritonBackend(Backend):
    name = "triton"
    description = "a Triton Inference Server over gRPC (model repository from 'slidefuse triton')"
    options: TritonOptions
    options_type = TritonOptions

    def __init__(self, bundle: Bundle, **options: Any) -> None:
        super().__init__(bundle, **options)
        self._client: Any = None
        self._shm: _Shm | None = None
        self._config: dict[str, Any] = {}
        self._server_version = ""
        self.max_batch = 0

    @classmethod
    def availability(cls) -> str | None:
        try:
            import tritonclient.grpc  # noqa: F401
        except ImportError:
            return str(MissingExtra("tritonclient", "triton", "the triton backend"))
        return None

    def device_kind(self) -> DeviceKind:
        groups = self._config.get("instance_group") or [{}]
        return "cuda" if groups[0].get("kind") == "KIND_GPU" else "cpu"

    # --- lifecycle ---------------------------------------------------------------------------------
    def _load(self) -> None:
        import tritonclient.grpc as grpcclient

        o = self.options
        where = f"Triton server {o.url}"
        try:
            self._client = grpcclient.InferenceServerClient(o.url)
            live = self._client.is_server_live(client_timeout=10)
        except Exception as exc:  # tritonclient raises InferenceServerException, grpc its own errors
            raise unavailable(self.name, f"no {where} answers ({one_line(exc, max_chars=200)}); start it with "
                              "'tritonserver --model-repository REPO' or pass url=HOST:PORT") from exc
        if not live:
            raise unavailable(self.name, f"{where} is not live")
        if not self._client.is_model_ready(o.model, o.version):
            version = f" version {o.version}" if o.version else ""
            raise unavailable(self.name, f"{where} has no ready model '{o.model}'{version}; write the repository "
                              "with `slidefuse triton` (or slidefuse.deploy.triton_repo.write_repository) and serve it")
        self._config = self._client.get_model_config(o.model, o.version, as_json=True)["config"]
        self._server_version = str(self._client.get_server_metadata(as_json=True).get("version", ""))
        self._check_model()
        if o.shm == "on" or (o.shm == "auto" and o.local):
            self._shm = self._register_shm()
        log.info("triton: model %s on %s (%s, max_batch_size %d%s)", o.model, o.url, self.device_kind(),
                 self.max_batch, ", system shared memory" if self._shm else "")

    def _check_model(self) -> None:
        """The served model's input, output and bundle digest against the manifest; BundleError otherwise."""
        m, c, o = self.bundle.manifest, self._config, self.options
        t = m.tile_size
        ins = [(i.get("name"), i.get("data_type"), [int(d) for d in i.get("dims", [])]) for i in c.get("input", [])]
        outs = {i.get("name"): (i.get("data_type"), [int(d) for d in i.get("dims", [])]) for i in c.get("output", [])}
        self.max_batch = int(c.get("max_batch_size", 0))
        fix = f"serve this bundle's repository (written from {self.bundle.path} by `slidefuse triton`)"
        if ins != [(m.input_name, "TYPE_UINT8", [t, t, 3])] or \
                outs.get(m.output_name) != ("TYPE_FP32", [m.num_classes, t, t]) or self.max_batch < 1:
            raise BundleError(f"Triton model '{o.model}' at {o.url} takes {ins} and gives {sorted(outs.items())} "
                              f"with max_batch_size {self.max_batch}; the bundle needs input '{m.input_name}' "
                              f"uint8 [{t}, {t}, 3] and output '{m.output_name}' fp32 [{m.num_classes}, {t}, {t}] "
                              f"with a batch axis; {fix}")
        served = (c.get("parameters", {}).get(DIGEST_KEY) or {}).get("string_value")
        if o.check_digest and served != self.bundle.digest:
            raise BundleError(f"Triton model '{o.model}' at {o.url} was made from bundle {str(served)[:16] or '?'}..., "
                              f"not from {self.bundle.path} ({self.bundle.digest[:16]}...); {fix}, or pass "
                              "check_digest=false to use it anyway")

    def _register_shm(self) -> _Shm | None:
        import tritonclient.utils.shared_memory as shm

        m, tag = self.bundle.manifest, uuid.uuid4().hex[:12]
        in_bytes = self.max_batch * m.tile_size * m.tile_size * 3
        out_bytes = self.max_batch * m.num_classes * m.tile_size * m.tile_size * 4
        regions = _Shm(f"slidefuse-in-{tag}", f"slidefuse-out-{tag}", None, None, in_bytes, out_bytes)
        try:
            regions.in_handle = shm.create_shared_memory_region(regions.in_name, f"/{regions.in_name}", in_bytes)
            regions.out_handle = shm.create_shared_memory_region(regions.out_name, f"/{regions.out_name}", out_bytes)
            self._client.register_system_shared_memory(regions.in_name, f"/{regions.in_name}", in_bytes)
            self._client.register_system_shared_memory(regions.out_name, f"/{regions.out_name}", out_bytes)
        except Exception as exc:
            self._shm = regions
            self._release_shm()
            if self.options.shm == "on":
                raise unavailable(self.name, f"system shared memory with {self.options.url} failed "
                                  f"({one_line(exc, max_chars=200)}); pass shm=off") from exc
            log.info("triton: no shared memory with %s (%s); tiles go in the gRPC messages", self.options.url,
                     one_line(exc, max_chars=200))
            return None
        return regions

    def _release_shm(self) -> None:
        import tritonclient.utils.shared_memory as shm

        regions, self._shm = self._shm, None
        if regions is None:
            return
        for name, handle in ((regions.in_name, regions.in_handle), (regions.out_name, regions.out_handle)):
            if handle is None:
                continue
            try:
                self._client.unregister_system_shared_memory(name)
            except Exception as exc:  # the server may be gone; the region is still ours to remove
                log.debug("triton: unregister %s: %s", name, exc)
            shm.destroy_shared_memory_region(handle)

    def _close(self) -> None:
        if self._client is not None:
            self._release_shm()
            self._client.close()
        self._client = None

    # --- running -------------------------------------------------------------------------------------
    def _run(self, tiles: np.ndarray) -> np.ndarray:
        step = self.max_batch
        if len(tiles) <= step:
            return self._infer(tiles)
        return np.concatenate([self._infer(tiles[i:i + step]) for i in range(0, len(tiles), step)])

    def _infer(self, tiles: np.ndarray) -> np.ndarray:
        """One request: uint8 [b, T, T, 3] with b <= max_batch_size -> float32 [b, C, T, T]."""
        import tritonclient.grpc as grpcclient

        m, o = self.bundle.manifest, self.options
        shape = [len(tiles), m.num_classes, m.tile_size, m.tile_size]
        inp = grpcclient.InferInput(m.input_name, list(tiles.shape), "UINT8")
        out = grpcclient.InferRequestedOutput(m.output_name)
        regions = self._shm
        if regions is not None:
            import tritonclient.utils.shared_memory as shm

            shm.set_shared_memory_region(regions.in_handle, [tiles])
            inp.set_shared_memory(regions.in_name, tiles.nbytes)
            out.set_shared_memory(regions.out_name, 4 * int(np.prod(shape)))
        else:
            inp.set_data_from_numpy(tiles)
        try:
            result = self._client.infer(o.model, [inp], model_version=o.version, outputs=[out],
                                        client_timeout=o.timeout_s)
        except Exception as exc:
            raise BackendUnavailable(f"Triton server {o.url} failed a request to model '{o.model}': "
                                     f"{one_line(exc, max_chars=300)}") from exc
        if regions is not None:
            import tritonclient.utils.shared_memory as shm

            probs = np.array(shm.get_contents_as_numpy(regions.out_handle, np.float32, shape), copy=True)
        else:
            try:
                probs = np.asarray(result.as_numpy(m.output_name), dtype=np.float32)
            except ValueError as exc:  # the response's bytes do not fill the shape it states
                raise self._bad_output(one_line(exc, max_chars=200)) from exc
        check_probabilities(probs, self._bad_output)
        return probs

    def _bad_output(self, what: str) -> BackendUnavailable:
        o = self.options
        return BackendUnavailable(
            f"Triton model '{o.model}' at {o.url} returned no valid probabilities ({what}); a Python-backend model "
            "that hands numpy 2 arrays to a stub built for numpy 1 (PyTriton 0.7) sends empty outputs: rewrite the "
            "repository with 'slidefuse triton' or give the server numpy < 2")

    def info(self) -> BackendInfo:
        params = self._config.get("parameters", {})
        precision = (params.get("slidefuse.precision") or {}).get("string_value")
        graph = (params.get("slidefuse.graph") or {}).get("string_value")
        return BackendInfo(
            self.name, self.device_kind(), precision, graph=graph,
            versions={"tritonclient": _tritonclient_version(), "triton_server": self._server_version or None},
            settings={"url": self.options.url, "model": self.options.model,
                      "model_version": self.options.version or None, "max_batch_size": self.max_batch,
                      "shared_memory": self._shm is not None,
                      "platform": self._config.get("platform") or self._config.get("backend")},
        )


def check_probabilities(probs: np.ndarray, error: Any) -> None:
    """Raise `error(what)` unless float32 `probs` [B, C, T, T] sum to 1 over C on each tile's first row (a cheap
    sample: B*C*T values), which catches empty or zero-filled responses (shared memory never written)."""
    sums = probs[:, :, 0, :].sum(axis=1, dtype=np.float64)
    worst = float(np.abs(sums - 1.0).max()) if sums.size else 0.0
    if not np.isfinite(worst) or worst > 1e-3:
        raise error(f"class sums on a sampled row are off 1 by up to {worst:.3g}")


def _tritonclient_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tritonclient")
    except PackageNotFoundError:
        return None
