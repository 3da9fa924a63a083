//! The course: `lessons/NN-topic.md`, embedded in the binary so `tcp-lab lesson 6` works
//! anywhere the binary does, with no files beside it.
//!
//! A lesson is Markdown, drawn for the terminal at its width (80 columns when it is not a
//! terminal): prose rewrapped, code blocks kept exactly as written (a command or a transcript must
//! not be re-flowed), tables fitted, colour per `--color`. The files themselves are in
//! `lessons/`. `tests/lessons.rs` keeps every command and output in the lessons true.

use std::io::{self, Write};

use anyhow::{bail, Result};
use colored::Colorize;
use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

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
    lesson!(12, "chat", "12-chat.md"),
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
    let width = width();
    writeln!(out, "{}", "The tcp-lab course".bold())?;
    // `  NN  name          ` then the title, wrapped under itself.
    let hang = " ".repeat(2 + 2 + 2 + 13 + 1);
    for lesson in LESSONS {
        let title = wrap(lesson.title(), width, &hang, &hang);
        for (i, line) in title.iter().enumerate() {
            if i == 0 {
                let name = format!("{:<13}", lesson.name);
                writeln!(
                    out,
                    "  {:>2}  {} {}",
                    lesson.number,
                    name.cyan(),
                    line.trim_start()
                )?;
            } else {
                writeln!(out, "{line}")?;
            }
        }
    }
    writeln!(out)?;
    // The commands are kept whole (their spaces do not break).
    let hint = format!(
        "Read one with `{}` or `{}`; start with `{}`.",
        "tcp-lab lesson N".replace(' ', NBSP),
        "tcp-lab lesson NAME".replace(' ', NBSP),
        "tcp-lab lesson 0".replace(' ', NBSP)
    );
    for line in wrap(&hint, width, "", "") {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The lesson drawn for a terminal (or a pipe) at its width.
fn write_lesson(out: &mut impl Write, lesson: &Lesson) -> io::Result<()> {
    out.write_all(render(lesson.text, width()).as_bytes())
}

/// The width to draw at: the terminal's, at most [`MAX_WIDTH`]; 80 when not a terminal.
fn width() -> usize {
    terminal_size::terminal_size()
        .map_or(80, |(terminal_size::Width(w), _)| usize::from(w))
        .clamp(MIN_WIDTH, MAX_WIDTH)
}

/// Prose longer than this is hard to read, however wide the terminal.
const MAX_WIDTH: usize = 100;
const MIN_WIDTH: usize = 40;

/// Code blocks are indented this much (when they still fit), and never wrapped: a command or a
/// transcript must stay as it is typed or printed.
const CODE_INDENT: &str = "  ";

/// Markdown for a terminal: prose rewrapped to `width`, code blocks kept as they are (indented,
/// commands highlighted), tables fitted to the width, headings bold. Colour (and with it bold)
/// follows `colored`'s setting (`--color`, NO_COLOR, a terminal or not); without it, inline
/// code keeps its backticks and headings are underlined with a row of `=` or `-`.
pub fn render(markdown: &str, width: usize) -> String {
    let mut out = String::with_capacity(markdown.len() * 2);
    for line in render_lines(markdown, width) {
        out.push_str(&line.text);
        out.push('\n');
    }
    out
}

/// One line of a rendered lesson.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    /// Part of a code block: kept as written, so it may be wider than the width.
    pub code: bool,
}

/// [`render`], line by line, each saying whether it belongs to a code block.
pub fn render_lines(markdown: &str, width: usize) -> Vec<Line> {
    let mut renderer = Renderer::new(width);
    for event in Parser::new_ext(markdown, Options::ENABLE_TABLES) {
        renderer.event(event);
    }
    renderer.finish()
}

/// How inline text is styled: nested spans add up.
#[derive(Default, Clone, Copy)]
struct Style {
    bold: usize,
    italic: usize,
}

/// A table being collected: rows of cells, each cell styled inline text.
#[derive(Default)]
struct Table {
    rows: Vec<Vec<String>>,
    header_rows: usize,
}

/// Walks pulldown-cmark's events and lays out lines.
struct Renderer {
    width: usize,
    colour: bool,
    lines: Vec<Line>,
    /// The inline text of the paragraph, heading, list item or cell being collected.
    inline: String,
    style: Style,
    /// Open lists: the next number of an ordered one, None for bullets.
    lists: Vec<Option<u64>>,
    /// The bullet (`- `, `3. `) still to be printed before the item's first line.
    bullet: Option<String>,
    /// The open code block's info string and text.
    code: Option<(String, String)>,
    table: Option<Table>,
    /// A link's destination, printed after its text when it differs from it.
    link: Option<(String, usize)>,
}

impl Renderer {
    fn new(width: usize) -> Renderer {
        Renderer {
            width,
            colour: colored::control::SHOULD_COLORIZE.should_colorize(),
            lines: Vec::new(),
            inline: String::new(),
            style: Style::default(),
            lists: Vec::new(),
            bullet: None,
            code: None,
            table: None,
            link: None,
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) => match &mut self.code {
                Some((_, code)) => code.push_str(&text),
                None => self.push_text(&text),
            },
            Event::Code(code) => self.push_code(&code),
            Event::SoftBreak => self.inline.push(' '),
            Event::HardBreak => self.flush_paragraph(),
            Event::Html(html) | Event::InlineHtml(html) => self.push_text(&html),
            Event::Rule => {
                let rule = "─".repeat(self.width.min(40));
                self.push_line(rule.dimmed().to_string(), false);
                self.blank();
            }
            _ => {}
        }
    }

    fn start(&mut self, tag: Tag) {
        match tag {
            Tag::Heading { .. } | Tag::Paragraph | Tag::TableCell => self.inline.clear(),
            Tag::CodeBlock(kind) => {
                let info = match kind {
                    CodeBlockKind::Fenced(info) => info.trim().to_string(),
                    CodeBlockKind::Indented => String::new(),
                };
                self.code = Some((info, String::new()));
            }
            Tag::List(start) => {
                // A list that starts inside an item's text: end that text first.
                self.flush_paragraph();
                self.lists.push(start);
            }
            Tag::Item => {
                let bullet = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        *n += 1;
                        format!("{}. ", *n - 1)
                    }
                    _ => "- ".to_string(),
                };
                self.bullet = Some(bullet);
            }
            Tag::Strong => self.style.bold += 1,
            Tag::Emphasis => self.style.italic += 1,
            Tag::Link { dest_url, .. } => {
                self.link = Some((dest_url.to_string(), self.inline.len()))
            }
            Tag::Table(_) => self.table = Some(Table::default()),
            Tag::TableHead | Tag::TableRow => {
                if let Some(table) = &mut self.table {
                    table.rows.push(Vec::new());
                }
            }
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            // A paragraph ends with an empty line, in a list too: a list whose items hold
            // paragraphs (not bare text) is a loose one, its items apart.
            TagEnd::Paragraph => {
                self.flush_paragraph();
                self.blank();
            }
            TagEnd::Heading(level) => self.heading(level),
            TagEnd::CodeBlock => self.code_block(),
            TagEnd::List(_) => {
                self.lists.pop();
                if self.lists.is_empty() {
                    self.blank();
                }
            }
            TagEnd::Item => self.flush_paragraph(),
            TagEnd::Strong => self.style.bold -= 1,
            TagEnd::Emphasis => self.style.italic -= 1,
            TagEnd::Link => {
                if let Some((dest, at)) = self.link.take() {
                    let text = self.inline[at..].replace(NBSP, " ");
                    if !dest.is_empty() && !text.contains(&dest) {
                        self.push_text(&format!("({dest})"));
                    }
                }
            }
            TagEnd::TableHead => {
                if let Some(table) = &mut self.table {
                    table.header_rows = table.rows.len();
                }
            }
            TagEnd::TableCell => {
                let cell = std::mem::take(&mut self.inline);
                if let Some(row) = self.table.as_mut().and_then(|t| t.rows.last_mut()) {
                    row.push(cell);
                }
            }
            TagEnd::Table => {
                if let Some(table) = self.table.take() {
                    self.draw_table(table);
                    self.blank();
                }
            }
            _ => {}
        }
    }

    /// Words of prose, each styled on its own so that a style never spans a line break.
    fn push_text(&mut self, text: &str) {
        let style = self.style;
        let painted: Vec<String> = text
            .split(' ')
            .map(|word| {
                if word.is_empty() {
                    return String::new();
                }
                let mut shown = word.normal();
                if style.bold > 0 {
                    shown = shown.bold();
                }
                if style.italic > 0 {
                    shown = shown.italic();
                }
                shown.to_string()
            })
            .collect();
        self.inline.push_str(&painted.join(" "));
    }

    /// `inline code`: kept on one line where it fits (its spaces do not break), in cyan, or
    /// between backticks without colour.
    fn push_code(&mut self, code: &str) {
        let unbroken = code.replace(' ', NBSP);
        let shown = if self.colour {
            unbroken.cyan().to_string()
        } else {
            format!("`{unbroken}`")
        };
        self.inline.push_str(&shown);
    }

    /// The indent of the current list level: two columns per level, beyond the first.
    fn list_indent(&self) -> String {
        " ".repeat(2 * self.lists.len().saturating_sub(1))
    }

    /// Wrap the collected inline text to the width, with the item's bullet on its first line.
    fn flush_paragraph(&mut self) {
        let text = std::mem::take(&mut self.inline);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let indent = self.list_indent();
        let (first, rest) = match (self.bullet.take(), self.lists.is_empty()) {
            (Some(bullet), _) => {
                let hang = " ".repeat(bullet.len());
                (format!("{indent}{bullet}"), format!("{indent}{hang}"))
            }
            // A list item's later paragraph lines up under its text.
            (None, false) => (format!("{indent}  "), format!("{indent}  ")),
            (None, true) => (String::new(), String::new()),
        };
        for line in wrap(text, self.width, &first, &rest) {
            self.push_line(line, false);
        }
    }

    fn heading(&mut self, level: HeadingLevel) {
        let text = std::mem::take(&mut self.inline).replace(NBSP, " ");
        let text = text.trim();
        let plain_width = textwrap::core::display_width(text);
        let lines: Vec<String> = wrap(text, self.width, "", "");
        for line in lines {
            let shown = match (self.colour, level) {
                (true, HeadingLevel::H1) => line.bold().underline().to_string(),
                (true, _) => line.bold().to_string(),
                (false, _) => line,
            };
            self.push_line(shown, false);
        }
        if !self.colour {
            let rule = match level {
                HeadingLevel::H1 => "=",
                HeadingLevel::H2 => "-",
                _ => "",
            };
            if !rule.is_empty() {
                self.push_line(rule.repeat(plain_width.min(self.width)), false);
            }
        }
        self.blank();
    }

    /// A code block, line by line as written: commands highlighted, never wrapped.
    fn code_block(&mut self) {
        let Some((info, code)) = self.code.take() else {
            return;
        };
        // Indented to set it apart from the prose, unless that would push it past the width.
        let widest = code
            .lines()
            .map(textwrap::core::display_width)
            .max()
            .unwrap_or(0);
        let mut indent = self.list_indent();
        if indent.len() + CODE_INDENT.len() + widest <= self.width {
            indent.push_str(CODE_INDENT);
        }
        for line in code.lines() {
            let shown = code_line(&info, line);
            self.push_line(format!("{indent}{shown}").trim_end().to_string(), true);
        }
        self.blank();
    }

    /// A table fitted to the width: columns as wide as their widest cell, or narrower (their
    /// cells wrapped) when the whole would not fit; the header bold and underlined with `─`.
    fn draw_table(&mut self, table: Table) {
        let columns = table.rows.iter().map(Vec::len).max().unwrap_or(0);
        if columns == 0 {
            return;
        }
        let gap = "  ";
        let natural: Vec<usize> = (0..columns)
            .map(|c| {
                table
                    .rows
                    .iter()
                    .filter_map(|row| row.get(c))
                    .map(|cell| textwrap::core::display_width(cell))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let available = self.width.saturating_sub(gap.len() * (columns - 1));
        let widths = fit_columns(&natural, available);
        let rule_width = widths.iter().sum::<usize>() + gap.len() * (columns - 1);
        for (r, row) in table.rows.iter().enumerate() {
            let cells: Vec<Vec<String>> = (0..columns)
                .map(|c| {
                    let cell = row.get(c).map_or("", String::as_str);
                    wrap(cell, widths[c], "", "")
                })
                .collect();
            let height = cells.iter().map(Vec::len).max().unwrap_or(1).max(1);
            for i in 0..height {
                let mut line = String::new();
                for (c, cell) in cells.iter().enumerate() {
                    let part = cell.get(i).map_or("", String::as_str);
                    let part = if r < table.header_rows && self.colour {
                        part.bold().to_string()
                    } else {
                        part.to_string()
                    };
                    line.push_str(&part);
                    if c + 1 < columns {
                        let pad = widths[c].saturating_sub(textwrap::core::display_width(&part));
                        line.push_str(&" ".repeat(pad));
                        line.push_str(gap);
                    }
                }
                self.push_line(line.trim_end().to_string(), false);
            }
            if r + 1 == table.header_rows {
                self.push_line("─".repeat(rule_width).dimmed().to_string(), false);
            }
        }
    }

    fn push_line(&mut self, text: String, code: bool) {
        self.lines.push(Line { text, code });
    }

    /// One empty line between blocks, never two.
    fn blank(&mut self) {
        if self.lines.last().is_some_and(|l| !l.text.is_empty()) {
            self.push_line(String::new(), false);
        }
    }

    fn finish(mut self) -> Vec<Line> {
        self.flush_paragraph();
        while self.lines.last().is_some_and(|l| l.text.is_empty()) {
            self.lines.pop();
        }
        self.lines
    }
}

/// A space that does not break a line: inside `inline code` while it is wrapped.
const NBSP: &str = "\u{a0}";

/// Wrap styled text at spaces (only there: `tcp-lab` is never split at its hyphen), measuring
/// without colour codes; a word longer than the width is broken.
fn wrap(text: &str, width: usize, first: &str, rest: &str) -> Vec<String> {
    let options = textwrap::Options::new(width.max(1))
        .initial_indent(first)
        .subsequent_indent(rest)
        .word_separator(textwrap::WordSeparator::AsciiSpace)
        .word_splitter(textwrap::WordSplitter::NoHyphenation)
        .break_words(true);
    textwrap::wrap(text, options)
        .into_iter()
        .map(|line| line.replace(NBSP, " ").trim_end().to_string())
        .collect()
}

/// Column widths that fit `available`: every column gets its natural width if all fit;
/// otherwise the narrow columns keep theirs and the wide ones share what is left equally.
fn fit_columns(natural: &[usize], available: usize) -> Vec<usize> {
    if natural.iter().sum::<usize>() <= available {
        return natural.to_vec();
    }
    let mut order: Vec<usize> = (0..natural.len()).collect();
    order.sort_by_key(|&c| natural[c]);
    let mut widths = vec![0; natural.len()];
    let mut left = available;
    for (i, &c) in order.iter().enumerate() {
        let share = left / (natural.len() - i);
        widths[c] = natural[c].min(share).max(MIN_COLUMN);
        left = left.saturating_sub(widths[c]);
    }
    widths
}

/// No column narrower than this, even when the table cannot fit.
const MIN_COLUMN: usize = 6;

/// A line of a code block: commands (`$ …` lines, and every line of a `sh` block that is not a
/// comment) bold green, the rest of a `sh` block dim, transcripts as they are.
fn code_line(info: &str, line: &str) -> String {
    let is_command =
        line.starts_with("$ ") || (info == "sh" && !line.trim_start().starts_with('#'));
    if is_command && !line.trim().is_empty() {
        line.green().bold().to_string()
    } else if info == "sh" {
        line.dimmed().to_string()
    } else {
        line.to_string()
    }
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
        assert!(find("99").is_none());
        assert!(find("closing").is_none());
    }

    #[test]
    fn prose_is_rewrapped_and_code_kept_as_written() {
        colored::control::set_override(false);
        let markdown = "# Title\n\nsome words that will not fit on one line of twenty\n\n```sh\ntcp-lab serve --mode blocking --no-explain\n```\n";
        let lines = render_lines(markdown, 20);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Title",
                "=====",
                "",
                "some words that will",
                "not fit on one line",
                "of twenty",
                "",
                // Wider than the width: not wrapped, and not indented either.
                "tcp-lab serve --mode blocking --no-explain",
            ]
        );
        assert!(lines.last().unwrap().code);
        assert!(!lines[3].code);
    }

    #[test]
    fn inline_code_keeps_its_backticks_without_colour_and_does_not_break() {
        colored::control::set_override(false);
        // 30 columns: the code span fits on the first line and is not split at its spaces.
        let shown = render("to run `tcp-lab client --send hi` **now**", 30);
        assert_eq!(shown, "to run\n`tcp-lab client --send hi` now\n");
    }

    #[test]
    fn lists_hang_under_their_bullets_and_tables_fit() {
        colored::control::set_override(false);
        let shown = render("- one two three four five six\n- b\n", 16);
        assert_eq!(shown, "- one two three\n  four five six\n- b\n");
        let table = "| a | b |\n|---|---|\n| x | a long cell that must wrap |\n";
        for line in render_lines(table, 20) {
            assert!(textwrap::core::display_width(&line.text) <= 20, "{line:?}");
        }
    }
}
