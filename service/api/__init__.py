"""Generated protobuf and gRPC stubs (written by scripts/generate_protos.py; do not edit).

Every message here is registered in DESCRIPTOR_POOL, a private descriptor pool, rather than in
protobuf's default pool: tritonclient registers the same `inference.*` symbols there, and protobuf
refuses duplicate symbols, so both could not be imported into one process otherwise. Pass
DESCRIPTOR_POOL to anything that looks descriptors up by name, such as gRPC server reflection.
"""

from google.protobuf import descriptor_pool as _descriptor_pool

DESCRIPTOR_POOL = _descriptor_pool.DescriptorPool()
