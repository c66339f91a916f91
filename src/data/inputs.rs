//! Turning the paths a user gives (files, folders, globs) into a sorted list of image files.

use std::path::{Path, PathBuf};

use crate::core::kind::{is_image_path, IMAGE_EXTENSIONS};
use crate::error::{Error, Result};

/// Expands each argument: a folder is searched recursively for image extensions, a pattern with
/// `*`, `?` or `[` is a glob, and anything else must be an existing file. The result is sorted
/// per argument and free of duplicates.
pub fn collect_images(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for arg in args {
        let text = arg.to_string_lossy();
        let mut found: Vec<PathBuf> = if arg.is_dir() {
            walkdir::WalkDir::new(arg)
                .follow_links(true)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_file() && is_image_path(e.path()))
                .map(|e| e.into_path())
                .collect()
        } else if !arg.exists() && text.contains(['*', '?', '[']) {
            glob::glob(&text)
                .map_err(|e| bad(arg, format!("invalid glob pattern: {e}")))?
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect()
        } else if arg.is_file() {
            vec![arg.clone()]
        } else {
            return Err(bad(arg, "no such file or folder".into()));
        };
        if found.is_empty() {
            let what = if arg.is_dir() {
                "folder holds no image"
            } else {
                "pattern matches no file"
            };
            return Err(bad(
                arg,
                format!("{what} (extensions: {})", IMAGE_EXTENSIONS.join(", ")),
            ));
        }
        found.sort();
        out.extend(found);
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

fn bad(path: &Path, reason: String) -> Error {
    Error::BadInput {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_globs_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        for p in [
            dir.path().join("b.png"),
            sub.join("a.JPG"),
            dir.path().join("notes.txt"),
        ] {
            std::fs::write(p, b"x").unwrap();
        }
        let found = collect_images(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(found.len(), 2);
        let globbed = collect_images(&[dir.path().join("*.png")]).unwrap();
        assert_eq!(globbed, vec![dir.path().join("b.png")]);

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = collect_images(&[empty]).unwrap_err();
        assert!(matches!(err, Error::BadInput { .. }), "{err}");
        let err = err.to_string();
        assert!(err.contains("empty") && err.contains("no image"), "{err}");
        let err = collect_images(&[dir.path().join("missing.png")]).unwrap_err();
        assert!(matches!(err, Error::BadInput { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("missing.png") && err.contains("no such file"),
            "{err}"
        );
    }
}
