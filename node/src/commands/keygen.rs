//! `fedmesh keygen`: creates a node key readable by its owner only and prints its PeerId.

use crate::cli::KeygenArgs;
use anyhow::Context;
use fedmesh_protocol::identity::Identity;

pub fn run(args: &KeygenArgs) -> anyhow::Result<()> {
    if args.out.exists() {
        anyhow::bail!("{} already exists; refusing to overwrite a key", args.out.display());
    }
    let identity = Identity::generate();
    identity
        .save(&args.out)
        .with_context(|| format!("cannot write key file {}", args.out.display()))?;
    eprintln!(
        "wrote a new key to {} (readable by its owner only); its PeerId:",
        args.out.display()
    );
    println!("{}", identity.member_id().to_peer_id_string());
    Ok(())
}
