//! Runs a test cluster until Ctrl-C and prints its kubeconfig path: for trying kubectl by hand.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tc = sluice_testcluster::TestCluster::start().await?;
    println!("{}", tc.kubeconfig_path().display());
    tokio::signal::ctrl_c().await?;
    tc.stop().await;
    Ok(())
}
