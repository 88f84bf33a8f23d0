use clap::Parser;

fn main() {
    let cli = dwflow::cli::Cli::parse();
    let exit = dwflow::cli::run(cli);
    std::process::exit(exit.code());
}
