//! Every protocol note the code cites exists: a `§N` or `§N.M` in `src/**/*.rs` (and in
//! these tests' own sources) that
//! refers to docs/protocols.md (written `docs/protocols.md §N`, or `PROTOCOLS.md §N` as
//! older comments do, or a bare `§N` in a file whose `//!` header cites the document)
//! must name a heading of docs/protocols.md. Citations of RFCs and PEPs (`RFC 3875 §6`)
//! are not ours and are left alone. No binary needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use protocol_tests::harness::root;

/// One citation of a section of docs/protocols.md.
#[derive(Debug, PartialEq, Eq)]
struct Citation {
    line: usize,
    section: String,
}

/// The section numbers of the headings of a markdown file (`## §2.1 Title`, `## 2.1 Title`
/// or `## §2. Title` all give `2.1` or `2`).
fn sections(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.trim_start_matches('#').trim_start();
            let rest = rest.strip_prefix('§').unwrap_or(rest);
            let number = section_number(rest);
            (!number.is_empty()).then_some(number)
        })
        .collect()
}

/// The leading `N`, `N.M`, … of `s`, without a trailing dot.
fn section_number(s: &str) -> String {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    s[..end].trim_end_matches('.').to_owned()
}

/// Who a citation belongs to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Owner {
    /// docs/protocols.md.
    Ours,
    /// An RFC or PEP.
    External,
    /// A bare `§` in a file whose header does not say which document it means.
    Unknown,
}

/// The citations of docs/protocols.md in one source file.
fn citations(source: &str) -> Vec<Citation> {
    let header: String = source
        .lines()
        .take_while(|l| l.trim_start().starts_with("//!") || l.trim().is_empty())
        .collect();
    let header_cites = header.to_ascii_lowercase().contains("protocols.md");

    // Comment text with the comment markers gone and the lines joined, so that a citation
    // split over two comment lines ("RFC 3875\n/// §6") reads as written.
    let mut flat = String::new();
    let mut line_starts = Vec::new();
    for line in source.lines() {
        line_starts.push(flat.len());
        let t = line.trim_start();
        let t = ["//!", "///", "//"]
            .iter()
            .find_map(|m| t.strip_prefix(m))
            .unwrap_or(t);
        flat.push_str(t.trim());
        flat.push(' ');
    }
    let line_of = |offset: usize| line_starts.partition_point(|&s| s <= offset);

    let mut out = Vec::new();
    let mut previous: Option<(usize, Owner, String)> = None; // (end, owner, section)
    for (at, _) in flat.match_indices('§') {
        let after = &flat[at + '§'.len_utf8()..];
        let section = section_number(after.trim_start());
        if section.is_empty() {
            continue;
        }
        let end = at + '§'.len_utf8() + (after.len() - after.trim_start().len()) + section.len();
        let before = &flat[..at];
        // `§2.1–§2.3`, `§0, §3`, `§2.7 and §2.9`: a list carries its first item's owner.
        let chained = previous.as_ref().and_then(|(prev_end, owner, prev)| {
            let between = flat[*prev_end..at].trim();
            let sep = between
                .split_whitespace()
                .all(|w| matches!(w, "," | "–" | "-" | "—" | "and" | "or" | "to"))
                || matches!(between, "" | "," | "–" | "-" | "—");
            let range = matches!(between, "–" | "-" | "—" | "to");
            sep.then(|| (*owner, range.then(|| prev.clone())))
        });
        let (owner, range_from) = match chained {
            Some((owner, from)) => (owner, from),
            None => (owner_before(before, header_cites), None),
        };
        if owner == Owner::Ours {
            let line = line_of(at);
            if let Some(from) = range_from {
                for s in between_sections(&from, &section) {
                    out.push(Citation { line, section: s });
                }
            }
            out.push(Citation {
                line,
                section: section.clone(),
            });
        }
        previous = Some((end, owner, section));
    }
    out
}

/// Whose citation a `§` is, from the words just before it.
fn owner_before(before: &str, header_cites: bool) -> Owner {
    let words: Vec<&str> = before.split_whitespace().rev().take(2).collect();
    let word = |i: usize| {
        words
            .get(i)
            .map(|w| w.trim_start_matches(['(', '[', '`']))
            .unwrap_or("")
    };
    if word(0).to_ascii_lowercase().ends_with("protocols.md") {
        return Owner::Ours;
    }
    let number = word(0).trim_end_matches([',', ':']);
    if !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit())
        && matches!(word(1), "RFC" | "PEP")
    {
        return Owner::External;
    }
    if header_cites {
        Owner::Ours
    } else {
        Owner::Unknown
    }
}

/// The sections strictly between `from` and `to` when both are `P.a` and `P.b` with the
/// same parent `P` (a range `§2.1–§2.3` includes §2.2); otherwise none.
fn between_sections(from: &str, to: &str) -> Vec<String> {
    let split = |s: &str| {
        s.rsplit_once('.')
            .and_then(|(p, n)| Some((p.to_owned(), n.parse::<u32>().ok()?)))
    };
    match (split(from), split(to)) {
        (Some((p, a)), Some((q, b))) if p == q && a < b => {
            (a + 1..b).map(|n| format!("{p}.{n}")).collect()
        }
        _ => Vec::new(),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_protocol_note_cited_in_the_code_exists_in_docs_protocols_md() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("docs/protocols.md"))
        .expect("docs/protocols.md: the protocol notes the code cites");
    let have = sections(&doc);
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("protocol-tests"), &mut files);
    // This file cites made-up sections on purpose, in its tests of the scan.
    files.retain(|f| !f.ends_with("protocol-tests/tests/docs.rs"));
    files.sort();
    let mut found = 0;
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for c in citations(&text) {
            found += 1;
            if !have.contains(&c.section) {
                missing.push(format!(
                    "{}:{} cites §{}, which docs/protocols.md has no heading for",
                    file.strip_prefix(&root).unwrap_or(file).display(),
                    c.line,
                    c.section
                ));
            }
        }
    }
    // The code cites the notes in dozens of places: finding none means this scan broke.
    assert!(
        found >= 20,
        "only {found} citations of docs/protocols.md found in src/: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "citations without a section (add the section to docs/protocols.md or fix the \
         citation):\n{}\nsections there: {have:?}",
        missing.join("\n")
    );
}

#[test]
fn no_comment_cites_a_document_outside_the_repository() {
    // The protocol notes once lived outside the repository as PROTOCOLS.md; a reader of
    // the code must find every citation in it (docs/protocols.md).
    let root = root();
    let mut files = Vec::new();
    for dir in ["src", "deploy", "protocol-tests/src", "benches"] {
        all_files(&root.join(dir), &mut files);
    }
    let mut found = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            if line.contains("PROTOCOLS.md") {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        files.len() > 50,
        "only {} files scanned: the scan is broken",
        files.len()
    );
    assert!(
        found.is_empty(),
        "cite docs/protocols.md §N instead:\n{}",
        found.join("\n")
    );
}

/// Every file under `dir` (any kind).
fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn the_headings_of_docs_protocols_md_are_numbered_once_each() {
    let doc = std::fs::read_to_string(root().join("docs/protocols.md")).unwrap();
    let mut seen = BTreeSet::new();
    for line in doc.lines().filter(|l| l.starts_with('#')) {
        let rest = line.trim_start_matches('#').trim_start();
        let number = section_number(rest.strip_prefix('§').unwrap_or(rest));
        if !number.is_empty() {
            assert!(seen.insert(number.clone()), "§{number} twice: {line}");
        }
    }
    for needed in [
        "0", "1", "1.1", "2", "2.13", "3", "4", "4.6", "5", "5.8", "6",
    ] {
        assert!(seen.contains(needed), "no §{needed} in docs/protocols.md");
    }
}

fn sections_cited(source: &str) -> Vec<String> {
    citations(source).into_iter().map(|c| c.section).collect()
}

#[test]
fn the_citation_scan_reads_both_spellings_lists_ranges_and_bare_sections() {
    // Both spellings, before and after the lead's rename.
    assert_eq!(sections_cited("// see PROTOCOLS.md §2.4\n"), ["2.4"]);
    assert_eq!(sections_cited("// see docs/protocols.md §4.3.\n"), ["4.3"]);
    // A list and a range carry the first item's document; a range includes its middle.
    assert_eq!(
        sections_cited("//! Records (PROTOCOLS.md §2.1–§2.3, §2.6).\n"),
        ["2.1", "2.2", "2.3", "2.6"]
    );
    // A bare § counts when the file's header cites the document, not otherwise.
    let cited = "//! FastCGI (docs/protocols.md §2).\n\nfn f() {} // §2.7\n";
    assert_eq!(sections_cited(cited), ["2", "2.7"]);
    assert_eq!(citations(cited)[1].line, 3);
    assert_eq!(sections_cited("//! Nothing here.\n\n// §2.7\n"), [""; 0]);
}

#[test]
fn the_citation_scan_leaves_rfc_and_pep_sections_alone() {
    let header = "//! Responses (PROTOCOLS.md §6).\n";
    for text in [
        "/// Decimal (RFC 3875 §4.1.2): digits only.\n",
        "/// Hop-by-hop (PEP 3333, RFC 9110 §7.6.1).\n",
        // Split over two comment lines.
        "/// a CGI response (FastCGI STDOUT, SCGI; RFC 3875\n/// §6) whose header block\n",
        // A list after an RFC stays the RFC's.
        "/// RFC 9110 §6.4.1 and §7.6.1\n",
    ] {
        assert_eq!(sections_cited(&format!("{header}{text}")), ["6"], "{text}");
    }
    // An RFC citation does not swallow a later citation of ours in another sentence.
    assert_eq!(
        sections_cited(&format!(
            "{header}/// `Status:` (RFC 3875 §6.3.3): SCGI follows CGI (§2.10, §3).\n"
        )),
        ["6", "2.10", "3"]
    );
}

#[test]
fn headings_give_their_section_numbers() {
    let s = sections("# Notes\n## §0. At a glance\n### §2.13 Paths\n## 5. Duties\ntext §9\n");
    assert_eq!(
        s.into_iter().collect::<Vec<_>>(),
        ["0", "2.13", "5"].map(String::from)
    );
}
