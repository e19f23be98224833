"""Host-side data preparation and input pipeline for omnirrm_jax (no model code)."""
