"""Segmenting many slides on many GPUs or machines: a Ray cluster (`ray_runner.segment_on_ray`, the `ray`
extra), its workers (`worker.SlideWorker`, one per GPU or per N CPU cores, each holding an open backend) and
the check that every node sees the output folder (`storage`). Without Ray, plain `slidefuse segment`
processes share a list through the claim files of `slidefuse.runtime.segment.claims`.
"""

from slidefuse.distributed.ray_runner import ClusterStatus, RayConfig, segment_on_ray
from slidefuse.distributed.storage import SharedStorageError

__all__ = ["ClusterStatus", "RayConfig", "SharedStorageError", "segment_on_ray"]
