//! icegate-signal: the runtime shell.
fn main() {}
