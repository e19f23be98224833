"""The curated public API (`omnirrm_jax.__all__`): every name resolves, is documented in the package docstring,
and `import omnirrm_jax` alone stays light."""
import re
import subprocess
import sys

import omnirrm_jax


def test_every_public_name_resolves():
    for name in omnirrm_jax.__all__:
        value = getattr(omnirrm_jax, name)
        assert value is not None and (callable(value) or isinstance(value, dict)), name
    assert omnirrm_jax.train_sft.__module__ == "omnirrm_jax.training.sft"
    assert omnirrm_jax.train_grpo.__module__ == "omnirrm_jax.training.grpo"


def test_every_public_name_is_documented():
    documented = set(re.findall(r"\b\w+\b", omnirrm_jax.__doc__))
    assert not set(omnirrm_jax.__all__) - documented, set(omnirrm_jax.__all__) - documented


def test_import_is_light():
    code = "import sys, omnirrm_jax; print([m for m in ('jax', 'flax', 'numpy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout
