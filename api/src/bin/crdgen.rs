//! Prints the CRDs as YAML, or writes them into a folder: `crdgen [DIR]`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let docs = trellis_api::crd::crd_documents();
    match std::env::args().nth(1) {
        None => {
            for (_, yaml) in docs {
                print!("---\n{yaml}");
            }
            ExitCode::SUCCESS
        }
        Some(dir) => {
            for (file, yaml) in docs {
                let path = std::path::Path::new(&dir).join(file);
                if let Err(e) = std::fs::write(&path, yaml) {
                    eprintln!("crdgen: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
    }
}
