//! Load drivers live in `src/bin/` (one binary per workload); see `benches/README.md`.
