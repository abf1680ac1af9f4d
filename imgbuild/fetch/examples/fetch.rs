//! Manual check: `cargo run -p imgbuild-fetch --example fetch -- URL SHA256 CACHE_DIR`
//! downloads (no progress shown: the library only reports it, to an `Options::progress` the caller
//! supplies) and prints the cached path.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, sha256, cache] = args.as_slice() else {
        eprintln!("usage: fetch URL SHA256 CACHE_DIR");
        return ExitCode::from(2);
    };
    let source = imgbuild_fetch::Source {
        url: url.clone(),
        sha256: Some(sha256.clone()),
        sha512: None,
        signature: None,
    };
    match imgbuild_fetch::fetch(&source, &imgbuild_fetch::Options::new(cache)) {
        Ok(fetched) => {
            println!(
                "{} (from cache: {})",
                fetched.path.display(),
                fetched.from_cache
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
