//! The `sluice` binary: the controller and its offline tools.
fn main() {
    match sluice::api::crds_yaml() {
        Ok(yaml) => print!("{yaml}"),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    }
}
