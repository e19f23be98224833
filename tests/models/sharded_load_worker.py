"""One process of the two-process sharded-load test (tests/models/test_loading.py starts two of these).

    python tests/models/sharded_load_worker.py CHECKPOINT_DIR OUT_DIR

Loads the checkpoint onto an fsdp x tensor mesh over both processes' devices and writes OUT_DIR/reads.I.json: the
torch-layout slices this process read (`loading.read_slice`) and those its devices hold, per tensor; process 0 also
writes OUT_DIR/values.npz (every parameter gathered from both processes).
"""
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402


def _ranges(index, shape):
    return [list(s.indices(n)[:2]) for s, n in zip(index, shape)]


def main(ckpt: str, out: str) -> int:
    from flax import nnx
    from jax.experimental import multihost_utils

    import omnirrm_jax
    from omnirrm_jax.models import hf_map, loading
    from omnirrm_jax.models import params as P
    from omnirrm_jax.parallel import distributed
    from omnirrm_jax.parallel import sharding as S

    distributed.initialize_from_env()
    assert jax.process_count() == 2 and jax.device_count() == 8, (jax.process_count(), jax.device_count())
    reads: dict[str, list] = {}
    real = loading.read_slice

    def spy(files, stored, index):
        full = index if index is not None else (slice(None),) * len(stored.shape)
        reads.setdefault(stored.key, []).append(_ranges(full, stored.shape))
        return real(files, stored, index)

    loading.read_slice = spy
    abstract = P.abstract_thinker(P.read_config(ckpt))
    mesh = S.make_mesh(S.MeshConfig(data=1, fsdp=4, tensor=2))
    shardings = S.state_shardings(nnx.state(abstract, P.base_params_filter()), mesh)
    model = loading.load_hf_sharded(ckpt, abstract, shardings)

    index = loading.index_safetensors_dir(ckpt)
    plan = hf_map.match_hf_tensors(abstract, {n: t.shape for n, t in index.items()})
    held, values = {}, {}
    for path, var in nnx.to_flat_state(nnx.state(model, P.base_params_filter())):
        stored, leaf, arr = index[plan[path]], str(path[-1]), var[...]
        held[stored.key] = []
        for s in arr.addressable_shards:
            t_index = hf_map.torch_index(leaf, s.index, len(stored.shape))
            held[stored.key].append(_ranges(t_index or (slice(None),) * len(stored.shape), stored.shape))
        values[".".join(map(str, path))] = np.asarray(multihost_utils.process_allgather(arr, tiled=True))
    with open(os.path.join(out, f"reads.{jax.process_index()}.json"), "w") as f:
        json.dump({"reads": reads, "held": held, "package": os.path.dirname(omnirrm_jax.__file__)}, f)
    if jax.process_index() == 0:
        np.savez(os.path.join(out, "values.npz"), **values)
    multihost_utils.sync_global_devices("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
