//! Benchmarks of Caravan: criterion benches of the hot paths (`benches/hot_paths.rs`) and the end-to-end
//! reference workload (`b2b-journey-v1/run.py`). This library is empty: the crate exists for its benches.
