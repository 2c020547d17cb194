fn main() {
    eprintln!("turbo-dex: the server is not implemented yet");
    std::process::exit(2);
}
