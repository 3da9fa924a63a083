//! The course: `lessons/NN-topic.md`, embedded in the binary so `tcp-lab lesson 6` works
//! anywhere the binary does, with no files beside it.
//!
//! A lesson is Markdown. On a terminal it is shown with bold headings and indented code; piped
//! or with `--color never` it is printed exactly as written, so `tcp-lab lesson 6 > six.md`
//! gives back the file. `tests/lessons.rs` keeps every command and output in the lessons true.

use std::io::{self, Write};

use anyhow::{bail, Result};
use colored::Colorize;

use crate::cli::LessonArgs;

/// One lesson: its number, its short name (the file name without `NN-` and `.md`), its text.
#[derive(Debug, Clone, Copy)]
pub struct Lesson {
    pub number: u32,
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! lesson {
    ($number:literal, $name:literal, $file:literal) => {
        Lesson {
            number: $number,
            name: $name,
            text: include_str!(concat!("../lessons/", $file)),
        }
    };
}

/// Every lesson, in course order.
pub const LESSONS: &[Lesson] = &[
    lesson!(0, "setup", "00-setup.md"),
    lesson!(1, "blocking", "01-blocking.md"),
    lesson!(2, "processes", "02-processes.md"),
    lesson!(3, "threads", "03-threads.md"),
    lesson!(4, "nonblocking", "04-nonblocking.md"),
    lesson!(5, "readiness", "05-readiness.md"),
    lesson!(6, "close", "06-close.md"),
    lesson!(7, "resets", "07-resets.md"),
    lesson!(8, "half-close", "08-half-close.md"),
    lesson!(9, "multiplexing", "09-multiplexing.md"),
    lesson!(10, "byte-stream", "10-byte-stream.md"),
    lesson!(11, "event-loop", "11-event-loop.md"),
    lesson!(13, "measure", "13-measure.md"),
];

impl Lesson {
    /// The title: the text of the first `# ` heading.
    pub fn title(&self) -> &'static str {
        self.text
            .lines()
            .find_map(|line| line.strip_prefix("# "))
            .unwrap_or(self.name)
    }

    /// The file the lesson came from, e.g. `06-close.md`.
    pub fn file_name(&self) -> String {
        format!("{:02}-{}.md", self.number, self.name)
    }
}

/// Find a lesson by number (`6`, `06`), name (`close`) or file stem (`06-close`).
pub fn find(query: &str) -> Option<&'static Lesson> {
    let query = query.trim().trim_end_matches(".md");
    if let Ok(number) = query.parse::<u32>() {
        return LESSONS.iter().find(|l| l.number == number);
    }
    LESSONS.iter().find(|l| {
        l.name.eq_ignore_ascii_case(query)
            || format!("{:02}-{}", l.number, l.name).eq_ignore_ascii_case(query)
    })
}

/// `tcp-lab lesson [N|NAME]`.
pub fn run(args: &LessonArgs) -> Result<()> {
    let mut stdout = io::stdout().lock();
    let written = match &args.lesson {
        None => write_list(&mut stdout),
        Some(query) => match find(query) {
            Some(lesson) => write_lesson(&mut stdout, lesson),
            None => bail!(
                "there is no lesson {query:?} — `tcp-lab lesson` lists them (0 to {})",
                LESSONS.last().map_or(0, |l| l.number)
            ),
        },
    };
    // A reader who quits `less` or `head` early closes the pipe: that is not an error.
    match written.and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn write_list(out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", "The tcp-lab course".bold())?;
    for lesson in LESSONS {
        writeln!(
            out,
            "  {:>2}  {:<13} {}",
            lesson.number,
            lesson.name.cyan(),
            lesson.title()
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Read one with `tcp-lab lesson N` or `tcp-lab lesson NAME`; start with `tcp-lab lesson 0`."
    )
}

/// The lesson for a terminal when colour is on, else exactly as written.
fn write_lesson(out: &mut impl Write, lesson: &Lesson) -> io::Result<()> {
    if colored::control::SHOULD_COLORIZE.should_colorize() {
        out.write_all(render(lesson.text).as_bytes())
    } else {
        out.write_all(lesson.text.as_bytes())
    }
}

/// A small Markdown-for-terminals renderer: headings bold, code blocks indented with their
/// commands highlighted, `inline code` in cyan, **bold** bold. Nothing else is needed.
pub fn render(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len() * 2);
    let mut fence: Option<&str> = None; // the info string of the open code block
    for line in markdown.lines() {
        if let Some(info) = line.strip_prefix("```") {
            fence = match fence {
                None => Some(info.trim()),
                Some(_) => None,
            };
            continue;
        }
        let shown = match fence {
            Some(info) => code_line(info, line),
            None => prose_line(line),
        };
        out.push_str(&shown);
        out.push('\n');
    }
    out
}

fn code_line(info: &str, line: &str) -> String {
    let is_command =
        line.starts_with("$ ") || (info == "sh" && !line.trim_start().starts_with('#'));
    let shown = if is_command && !line.trim().is_empty() {
        line.green().bold().to_string()
    } else if info == "sh" {
        line.dimmed().to_string()
    } else {
        line.to_string()
    };
    format!("    {shown}")
}

fn prose_line(line: &str) -> String {
    if let Some(title) = line.strip_prefix("# ") {
        return title.bold().underline().to_string();
    }
    if let Some(heading) = line
        .strip_prefix("## ")
        .or_else(|| line.strip_prefix("### "))
    {
        return heading.bold().to_string();
    }
    inline(line)
}

/// `code` → cyan, **bold** → bold; the markers themselves are dropped.
fn inline(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while !rest.is_empty() {
        if let Some((before, after)) = split_span(rest, "`") {
            out.push_str(&bold_spans(before.0));
            out.push_str(&before.1.cyan().to_string());
            rest = after;
        } else {
            out.push_str(&bold_spans(rest));
            break;
        }
    }
    out
}

fn bold_spans(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(((before, inside), after)) = split_span(rest, "**") {
        out.push_str(before);
        out.push_str(&inside.bold().to_string());
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Split `a MARK b MARK c` into ((a, b), c); None when there is no closed span.
fn split_span<'a>(text: &'a str, mark: &str) -> Option<((&'a str, &'a str), &'a str)> {
    let start = text.find(mark)?;
    let inner_start = start + mark.len();
    let end = inner_start + text[inner_start..].find(mark)?;
    Some((
        (&text[..start], &text[inner_start..end]),
        &text[end + mark.len()..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lessons_are_numbered_in_order_and_titled() {
        assert_eq!(LESSONS[0].number, 0, "the course starts at lesson 0");
        for (i, lesson) in LESSONS.iter().enumerate().skip(1) {
            // In order; a number may be left free for a lesson still being written.
            assert!(
                lesson.number > LESSONS[i - 1].number,
                "{}",
                lesson.file_name()
            );
            assert!(
                lesson.text.starts_with("# "),
                "{} has no title",
                lesson.file_name()
            );
        }
    }

    #[test]
    fn lessons_are_found_by_number_name_and_stem() {
        assert_eq!(find("6").map(|l| l.name), Some("close"));
        assert_eq!(find("06").map(|l| l.name), Some("close"));
        assert_eq!(find("close").map(|l| l.number), Some(6));
        assert_eq!(find("06-close.md").map(|l| l.number), Some(6));
        assert!(find("12").is_none());
        assert!(find("closing").is_none());
    }

    #[test]
    fn inline_markers_are_dropped_and_unclosed_ones_kept() {
        colored::control::set_override(false);
        assert_eq!(inline("run `tcp-lab` **now**"), "run tcp-lab now");
        assert_eq!(inline("a ` alone"), "a ` alone");
        assert_eq!(render("```sh\ntcp-lab serve\n```"), "    tcp-lab serve\n");
    }
}
