//! Placeholder replaced by the benchmark harness.
fn main() {
    eprintln!("the benchmark harness is not written yet");
    std::process::exit(1);
}
