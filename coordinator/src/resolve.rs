//! Turning the user's input arguments (files, folders, globs) into files.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::InputError;
use crate::format::InputFormat;

/// Expands input patterns into the files to read.
///
/// A pattern is one of:
/// - an existing file, taken whatever its name;
/// - a folder: every file inside with a known extension, recursively;
/// - a glob: every file it matches, with matched folders expanded as above.
///
/// Each pattern's files come sorted, patterns in the order given. A file
/// reached twice is kept at its first place. Entries whose name starts with
/// `.` are skipped in folders and globs, as shells do. This also keeps out
/// macOS `._name` resource forks, which carry data extensions.
///
/// Fails naming the first pattern that matches nothing.
pub fn resolve_inputs(patterns: &[String]) -> Result<Vec<PathBuf>, InputError> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();

    for pattern in patterns {
        let found = expand(pattern)?;
        if found.is_empty() {
            return Err(InputError::NoMatch {
                pattern: pattern.clone(),
            });
        }

        for path in found {
            // Canonical paths, so that `a.csv` and `./a.csv` count once.
            let identity = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if seen.insert(identity) {
                files.push(path);
            }
        }
    }
    Ok(files)
}

fn expand(pattern: &str) -> Result<Vec<PathBuf>, InputError> {
    let path = Path::new(pattern);

    // An existing path wins over glob syntax, since file names may contain
    // `[` or `*`.
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if path.is_dir() {
        return list_folder(path);
    }
    if is_glob(pattern) {
        return expand_glob(pattern);
    }
    Ok(Vec::new())
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>, InputError> {
    let options = glob::MatchOptions {
        require_literal_leading_dot: true,
        ..glob::MatchOptions::new()
    };
    let matches = glob::glob_with(pattern, options).map_err(|source| InputError::BadPattern {
        pattern: pattern.to_string(),
        source,
    })?;

    let mut files = Vec::new();
    for entry in matches {
        let path = entry.map_err(|e| {
            let place = format!("{pattern}: {}", e.path().display());
            InputError::io(place, e.into())
        })?;

        if path.is_dir() {
            files.extend(list_folder(&path)?);
        } else if path.is_file() {
            files.push(path);
        }
    }

    files.sort();
    Ok(files)
}

/// Lists the files with a known extension under `folder`, sorted by path.
fn list_folder(folder: &Path) -> Result<Vec<PathBuf>, InputError> {
    let mut files = Vec::new();
    walk(folder, &mut files)?;
    files.sort();
    Ok(files)
}

/// Collects files recursively. Links to folders are not followed, so a
/// link cycle cannot make the walk endless; links to files are taken.
fn walk(folder: &Path, files: &mut Vec<PathBuf>) -> Result<(), InputError> {
    let unreadable = |e| InputError::io(folder.display().to_string(), e);

    for entry in fs::read_dir(folder).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }

        let path = entry.path();
        let kind = entry.file_type().map_err(unreadable)?;
        if kind.is_dir() {
            walk(&path, files)?;
        } else if path.is_file() && InputFormat::is_listed_name(&name) {
            files.push(path);
        }
    }
    Ok(())
}
