"""The audit log for participants (public, rate-limited): the newest signed checkpoint and RFC 9162 consistency proofs
between two tree sizes, which every node's witness checks (gateway/witness.py), and the witnesses' signed
acknowledgements of what they checked (cloud/witnesses.py). Auditors read entries and inclusion proofs under
/v1/audit."""

from fastapi import APIRouter

from cloud.api.deps import CloudDep, Size, errors
from cloud.witnesses import WitnessAckBatch, WitnessAckBody, WitnessAckView
from federation.responses import CheckpointView, ConsistencyProof, WitnessAckResults

router = APIRouter(tags=["public"])


@router.get("/v1/log/checkpoint", responses=errors(404))
def log_checkpoint(cloud: CloudDep) -> CheckpointView:
    """The newest checkpoint, signed by the log key (C2SP tlog-checkpoint body, base64 Ed25519 signature)."""
    return cloud.log.checkpoint()


@router.get("/v1/log/consistency", responses=errors(404))
def log_consistency(old_size: Size, new_size: Size, cloud: CloudDep) -> ConsistencyProof:
    """Proof that the tree of `new_size` entries extends the tree of `old_size` entries (404 past the log's end)."""
    return ConsistencyProof(old_size=old_size, new_size=new_size,
                            proof=[h.hex() for h in cloud.log.consistency(old_size, new_size)])


@router.post("/v1/log/witness", tags=["participants"], responses=errors(400, 401, 403, 409))
def log_witness(ack: WitnessAckBody, cloud: CloudDep) -> WitnessAckView:
    """A node's signed acknowledgement that it verified this log's checkpoint of `tree_size` entries (root `root`);
    the cloud flags nodes that submit updates without checking (`cloud.witnesses`)."""
    return cloud.witnesses.acknowledge(ack)


@router.post("/v1/log/witness/batch", tags=["participants"], responses=errors(400, 401, 403))
def log_witness_batch(acks: WitnessAckBatch, cloud: CloudDep) -> WitnessAckResults:
    """Several nodes' acknowledgements (a hospital pool's): every signature checked first, then each as if alone."""
    return cloud.witnesses.acknowledge_batch(acks)
