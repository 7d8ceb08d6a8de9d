//! Rewriting one section of docs/PERFORMANCE.md: from its `## ` title to the next `## ` title
//! (or the end), leaving every other byte of the document as it was.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// The sections the benchmarks write. The others ("Analysis") are written by hand.
pub const SECTIONS: &[&str] = &[
    "Integrity scan",
    "Agent cost",
    "Event-rate ceiling and memory",
    "Hashing and size",
    "Backend",
    "Reporting",
];

/// What a new document starts with.
const HEADER: &str =
    "# Performance\n\nFigures measured by the scripts in `bench/`; each section is rewritten by its script.\n";

/// `doc` with the section titled `## title` replaced by `section` (which starts with that title),
/// or with `section` appended after a blank line when the document has none. Only the sections
/// in [`SECTIONS`] can be written.
pub fn replace_section(doc: &str, title: &str, section: &str) -> Result<String> {
    if !SECTIONS.contains(&title) {
        bail!("unknown section {title:?} (the benchmarks write {SECTIONS:?})");
    }
    let heading = format!("## {title}\n");
    if !section.starts_with(&heading) {
        bail!("the text for section {title:?} does not start with {heading:?}");
    }
    let new = format!("{}\n", section.trim_end_matches('\n'));
    let Some(start) = find_heading(doc, &heading) else {
        return Ok(format!("{}\n\n{new}", doc.trim_end_matches('\n')));
    };
    // From the newline that ends the title, so that an empty section is found too.
    let title_end = start + heading.len() - 1;
    // The section ends before the newline that precedes the next `## ` title: that newline
    // stays, so the blank line before the next title is kept.
    let end = doc[title_end..]
        .find("\n## ")
        .map_or(doc.len(), |i| title_end + i);
    Ok(format!("{}{new}{}", &doc[..start], &doc[end..]))
}

/// Where a line that is exactly `heading` starts.
fn find_heading(doc: &str, heading: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = doc[from..].find(heading) {
        let at = from + i;
        if at == 0 || doc.as_bytes()[at - 1] == b'\n' {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Rewrites the section `title` of the document at `path` (created with a short header if it
/// does not exist).
pub fn write_section(path: &Path, title: &str, section: &str) -> Result<()> {
    let doc = match std::fs::read_to_string(path) {
        Ok(doc) => doc,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HEADER.to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let doc = replace_section(&doc, title, section)?;
    std::fs::write(path, doc).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("updated {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Performance\n\nIntro.\n\n## Integrity scan\n\nold scan\n\n\
                       ## Agent cost\n\nold cost\n| a |\n\n## Analysis\n\n### Where\n\nby hand\n\n\
                       ## Reporting\n\nold reporting\n";

    #[test]
    fn a_section_in_the_middle_is_replaced_and_the_rest_kept_byte_for_byte() {
        let new = replace_section(DOC, "Agent cost", "## Agent cost\n\nnew cost\n\n").unwrap();
        assert_eq!(
            new,
            "# Performance\n\nIntro.\n\n## Integrity scan\n\nold scan\n\n\
             ## Agent cost\n\nnew cost\n\n## Analysis\n\n### Where\n\nby hand\n\n\
             ## Reporting\n\nold reporting\n"
        );
    }

    #[test]
    fn the_last_section_is_replaced_to_the_end() {
        let new = replace_section(DOC, "Reporting", "## Reporting\n\nnew").unwrap();
        assert_eq!(new, DOC.replace("old reporting\n", "new\n"));
    }

    #[test]
    fn a_section_before_a_hand_written_one_stops_at_its_title() {
        let new = replace_section(DOC, "Integrity scan", "## Integrity scan\n\nx\n").unwrap();
        assert_eq!(new, DOC.replace("old scan\n", "x\n"));
        // Subheadings (`### `) do not end a section.
        let text = "## Hashing and size\n\nold\n\n### Sub\n\nmore\n\n## Analysis\n\nhand\n";
        let new =
            replace_section(text, "Hashing and size", "## Hashing and size\n\nnew\n").unwrap();
        assert_eq!(new, "## Hashing and size\n\nnew\n\n## Analysis\n\nhand\n");
    }

    #[test]
    fn an_empty_section_right_before_the_next_title_is_replaced_alone() {
        let text = "## Backend\n## Reporting\n\nr\n";
        let new = replace_section(text, "Backend", "## Backend\n\nb\n").unwrap();
        assert_eq!(new, "## Backend\n\nb\n\n## Reporting\n\nr\n");
    }

    #[test]
    fn rewriting_with_the_same_text_changes_nothing() {
        let same = "## Agent cost\n\nold cost\n| a |\n";
        assert_eq!(replace_section(DOC, "Agent cost", same).unwrap(), DOC);
    }

    #[test]
    fn a_missing_section_is_appended_after_a_blank_line() {
        let new = replace_section("# P\n\nIntro.\n\n", "Backend", "## Backend\n\nb\n").unwrap();
        assert_eq!(new, "# P\n\nIntro.\n\n## Backend\n\nb\n");
        let new = replace_section("", "Backend", "## Backend\n\nb").unwrap();
        assert_eq!(new, "\n\n## Backend\n\nb\n");
    }

    #[test]
    fn a_title_inside_a_line_or_a_subheading_is_not_the_section() {
        let text = "# P\n\n### Integrity scan\n\nhand\n";
        let new = replace_section(text, "Integrity scan", "## Integrity scan\n\nx\n").unwrap();
        assert_eq!(
            new,
            "# P\n\n### Integrity scan\n\nhand\n\n## Integrity scan\n\nx\n"
        );
    }

    #[test]
    fn an_unknown_section_is_an_error() {
        let err = replace_section(DOC, "Analysis", "## Analysis\n\nx\n").unwrap_err();
        assert!(err.to_string().contains("unknown section"), "{err}");
        assert!(replace_section(DOC, "Agent", "## Agent\n").is_err());
    }

    #[test]
    fn a_text_without_its_title_is_an_error() {
        assert!(replace_section(DOC, "Agent cost", "## Reporting\n\nx\n").is_err());
    }

    #[test]
    fn each_section_of_the_performance_document_rewritten_as_it_is_changes_nothing() {
        let doc = include_str!("../../docs/PERFORMANCE.md");
        for title in SECTIONS {
            let heading = format!("## {title}\n");
            let start = find_heading(doc, &heading).expect(title);
            let end = doc[start..].find("\n## ").map_or(doc.len(), |i| start + i);
            let same = replace_section(doc, title, &doc[start..end]).unwrap();
            assert!(
                same == doc,
                "rewriting {title:?} with its own text changed the document"
            );
            let other = replace_section(doc, title, &format!("{heading}\nnew\n")).unwrap();
            assert_eq!(other[..start], doc[..start], "{title}");
            assert_eq!(other[start + heading.len() + 5..], doc[end..], "{title}");
        }
    }

    #[test]
    fn a_new_document_gets_the_header() {
        let dir = std::env::temp_dir().join(format!("xtask-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("PERFORMANCE.md");
        let _ = std::fs::remove_file(&path);
        write_section(&path, "Reporting", "## Reporting\n\nr\n").unwrap();
        write_section(&path, "Backend", "## Backend\n\nb\n").unwrap();
        write_section(&path, "Reporting", "## Reporting\n\nr2\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            text,
            format!("{HEADER}\n## Reporting\n\nr2\n\n## Backend\n\nb\n")
        );
    }
}
