"""Device meshes, logical-axis -> mesh-axis rules, and multi-host launch and collectives: what data loading,
decoding, checkpoints and training all place arrays with."""
