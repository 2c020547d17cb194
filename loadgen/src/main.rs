fn main() {
    eprintln!("dex-trader: the load generator is not implemented yet");
    std::process::exit(2);
}
