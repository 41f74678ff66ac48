"""Programs that run on a cluster's GPU nodes beside Ray, started by cluster.yaml's worker start commands: the
CUDA check (``cuda_check``) and the spot interruption watcher (``spot_watcher``). Standard library only at
import: they start before, and live beside, the node's Ray."""
