use clap::Parser;

fn main() {
    // Like other Unix tools, stop quietly when the reader of our output goes away
    // (`dwflow datasets show x | head`) instead of panicking on a broken pipe.
    // SAFETY: restoring the default action of a signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = dwflow::cli::Cli::parse();
    let exit = dwflow::cli::run(cli);
    std::process::exit(exit.code());
}
