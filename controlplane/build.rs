//! Compiles the control plane's Cap'n Proto schema with the system `capnp`
//! (Debian capnproto, installed by tools/setup.sh) into `$OUT_DIR`.

fn main() {
    println!("cargo:rerun-if-changed=schema/control.capnp");
    capnpc::CompilerCommand::new()
        .src_prefix("schema")
        .file("schema/control.capnp")
        // The generated module lives inside `rpc`, not at the crate root.
        .default_parent_module(vec!["rpc".into()])
        .run()
        .expect("compiling schema/control.capnp (is the capnp compiler installed? see tools/setup.sh)");
}
