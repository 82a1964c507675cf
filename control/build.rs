// Rebuild when the embedded web app (control/static/) or the migrations change.
fn main() {
    println!("cargo:rerun-if-changed=static");
    println!("cargo:rerun-if-changed=migrations");
}
