//! The module walls of the crate docs ("Modules and their walls"), checked on the sources: every
//! `crate::<module>` path in the library code of `src/<module>/**` or `src/<module>.rs` must name
//! the module itself, one it may use, or a listed exception. Test code (`#[cfg(test)]` modules
//! and `tests.rs` files) is not compiled into the library and may use any module.

use std::path::{Path, PathBuf};

/// Each module and the modules it may use besides itself, `error` and `limits` (which anyone
/// may use). The CLI (src/cli, a part of the binary) may use anything.
const RULES: &[(&str, &[&str])] = &[
    ("error", &["core"]),
    ("limits", &[]),
    ("core", &[]),
    ("nn", &[]),
    ("data", &["core"]),
    ("detect", &["core", "nn"]),
    ("ood", &["core", "data"]),
    ("eval", &["core", "data", "ood"]),
    ("render", &["core", "data", "detect", "eval", "nn", "ood"]),
    (
        "pipeline",
        &["core", "data", "detect", "eval", "nn", "ood", "render"],
    ),
    (
        "video",
        &["core", "data", "detect", "ood", "pipeline", "render"],
    ),
    ("synth", &["core"]),
];

/// Single items a module may use across a wall, and why.
const EXCEPTIONS: &[(&str, &str)] = &[
    // The unsupported-model message lists the families that detect runs.
    ("error", "detect::supported"),
];

/// `text` with comments and the contents of string and char literals blanked (newlines kept),
/// so that a path in a doc comment or an error message is not taken for a use.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        let raw_hashes = match rest {
            ['r', '"', ..] => Some(0),
            ['r', '#', ..] if !prev_is_ident(&chars, i) => {
                let n = rest[1..].iter().take_while(|&&c| c == '#').count();
                (rest.get(1 + n) == Some(&'"')).then_some(n)
            }
            _ => None,
        };
        let end = if rest.starts_with(&['/', '/']) {
            i + rest.iter().position(|&c| c == '\n').unwrap_or(rest.len())
        } else if rest.starts_with(&['/', '*']) {
            let close = rest.windows(2).position(|w| w == ['*', '/']);
            i + close.map_or(rest.len(), |p| p + 2)
        } else if let Some(n) = raw_hashes.filter(|_| !prev_is_ident(&chars, i)) {
            let open = 2 + n;
            let closing: Vec<char> = std::iter::once('"').chain("#".repeat(n).chars()).collect();
            let close = rest[open..]
                .windows(closing.len())
                .position(|w| w == closing);
            i + close.map_or(rest.len(), |p| open + p + closing.len())
        } else if rest[0] == '"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != '"' {
                j += if rest[j] == '\\' { 2 } else { 1 };
            }
            i + (j + 1).min(rest.len())
        } else if rest[0] == '\'' && rest.get(1) == Some(&'\\') {
            i + rest[2..]
                .iter()
                .position(|&c| c == '\'')
                .map_or(rest.len(), |p| p + 3)
        } else if rest[0] == '\'' && rest.get(2) == Some(&'\'') {
            i + 3
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        out.extend(chars[i..end].iter().map(|&c| blank(c)));
        i = end;
    }
    out
}

fn prev_is_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Every path used through `crate::` in `code`, with the byte offset where it starts and use
/// groups expanded: `crate::{a::b, c::{d, e as f}}` gives `a::b`, `c::d` and `c::e`.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        // A use tree never holds a `;`, so the statement's end bounds it.
        let end = code[from..].find(';').map_or(code.len(), |e| from + e);
        let mut paths = Vec::new();
        expand(&tokens(&code[from..end]), 0, "", &mut paths);
        out.extend(paths.into_iter().map(|p| (start, p)));
    }
    out
}

/// Identifiers, `::` and single other characters, whitespace dropped.
fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        if c.is_whitespace() {
            continue;
        } else if ident(c) {
            let mut word = c.to_string();
            while let Some(&n) = chars.peek().filter(|&&n| ident(n)) {
                word.push(n);
                chars.next();
            }
            out.push(word);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.push("::".into());
        } else {
            out.push(c.to_string());
        }
    }
    out
}

/// Expands the use tree at `tokens[pos..]` under `prefix` into `out`; returns where it ends.
fn expand(tokens: &[String], mut pos: usize, prefix: &str, out: &mut Vec<String>) -> usize {
    let at = |i: usize| tokens.get(i).map_or("", String::as_str);
    let is_name = |t: &str| {
        t == "*"
            || t.chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
    };
    let mut path = prefix.to_string();
    while is_name(at(pos)) {
        path.push_str(at(pos));
        pos += 1;
        if at(pos) != "::" {
            break;
        }
        path.push_str("::");
        pos += 1;
    }
    // A `{` after a name is a struct literal or a block, not a use group.
    if at(pos) != "{" || !(path.is_empty() || path.ends_with("::")) {
        if at(pos) == "as" {
            pos += 2;
        }
        out.push(path.trim_end_matches("::").to_string());
        return pos;
    }
    pos += 1;
    while at(pos) != "}" && pos < tokens.len() {
        pos = expand(tokens, pos, &path, out);
        match at(pos) {
            "," => pos += 1,
            "}" => {}
            _ => break,
        }
    }
    pos + 1
}

/// The lines of `code` inside `#[cfg(test)] mod … { … }` blocks (rustfmt's layout: the block
/// closes with `}` at the indent of `mod`).
fn test_lines(code: &str) -> Vec<bool> {
    let lines: Vec<&str> = code.lines().collect();
    let mut in_test = vec![false; lines.len()];
    let mut i = 0;
    while i < lines.len() {
        let is_test_mod = lines[i].trim() == "#[cfg(test)]"
            && lines.get(i + 1).is_some_and(|l| {
                let l = l.trim_start();
                l.starts_with("mod ") && l.trim_end().ends_with('{')
            });
        if !is_test_mod {
            i += 1;
            continue;
        }
        let indent = &lines[i + 1][..lines[i + 1].len() - lines[i + 1].trim_start().len()];
        let close = format!("{indent}}}");
        let end = (i + 2..lines.len())
            .find(|&j| lines[j].trim_end() == close)
            .unwrap_or(lines.len() - 1);
        in_test[i..=end].iter_mut().for_each(|t| *t = true);
        i = end + 1;
    }
    in_test
}

/// The top-level module a source file belongs to, for files under `src/`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// The broken walls in one file of `module`: `"<file>: crate::<path> (<module> may use …)"`.
fn violations(module: &str, file: &Path, text: &str) -> Vec<String> {
    let allowed = RULES
        .iter()
        .find(|(m, _)| *m == module)
        .map_or(&[][..], |(_, a)| *a);
    let test_file = file.file_name().is_some_and(|n| n == "tests.rs");
    let code = code_only(text);
    let in_test = test_lines(&code);
    let mut out = Vec::new();
    for (offset, path) in crate_paths(&code) {
        let is_test = test_file || in_test[code[..offset].matches('\n').count()];
        let top = path.split("::").next().unwrap_or_default();
        let ok = top == module
            || ["error", "limits"].contains(&top)
            || allowed.contains(&top)
            || is_test
            || EXCEPTIONS.iter().any(|(m, item)| {
                *m == module && (path == *item || path.starts_with(&format!("{item}::")))
            });
        if !ok {
            out.push(format!(
                "{}: crate::{path} ({module} may use: {})",
                file.display(),
                allowed.join(", ")
            ));
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.into_path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect()
}

#[test]
fn every_module_keeps_to_its_walls() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for file in rust_files(&src) {
        let module = module_of(&src, &file).expect("a file under src");
        if ["lib", "main", "cli"].contains(&module.as_str()) {
            continue;
        }
        assert!(
            RULES.iter().any(|(m, _)| *m == module),
            "{}: module `{module}` has no rule in src/core/walls.rs (and the crate docs)",
            file.display()
        );
        let text = std::fs::read_to_string(&file).unwrap();
        broken.extend(violations(&module, &file, &text));
    }
    assert!(
        broken.is_empty(),
        "imports across a module wall (see \"Modules and their walls\" in src/lib.rs):\n{}",
        broken.join("\n")
    );
}

#[test]
fn paths_in_groups_are_found_and_comments_and_strings_are_not() {
    let code = code_only(
        "use crate::{core::geometry::iou, detect::{nms, DetectOptions as D}};\n\
         // crate::video in a comment\n\
         let s = \"crate::video in a string\"; let c = '\"';\n\
         let x = crate::eval::f(r#\"crate::video\"#);\n",
    );
    let paths: Vec<String> = crate_paths(&code).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        paths,
        [
            "core::geometry::iou",
            "detect::nms",
            "detect::DetectOptions",
            "eval::f"
        ]
    );
}

#[test]
fn a_forbidden_import_is_reported_with_its_file_and_tests_may_use_anything() {
    let file = Path::new("src/data/x.rs");
    let text = "use crate::{\n    core::BoxRecord,\n    detect::nms::iou,\n};\n\
                use crate::detect::DetectOptions;\n\
                #[cfg(test)]\nmod tests {\n    use crate::video::Frame;\n    let o = crate::detect::DetectOptions {\n        conf: 0.5,\n    };\n}\n\
                let s = crate::synth::world::Scene { a: 1 };\n";
    assert_eq!(
        violations("data", file, text),
        vec![
            "src/data/x.rs: crate::detect::nms::iou (data may use: core)",
            "src/data/x.rs: crate::detect::DetectOptions (data may use: core)",
            "src/data/x.rs: crate::synth::world::Scene (data may use: core)",
        ]
    );
}
