//! Providers: how a turn's prompt becomes a process.
//!
//! A provider is an argv template, never a shell string, so a prompt can never be parsed as a
//! command (the built-in `shell` provider, whose whole point is to run the prompt with `sh -c`,
//! aside). Each element may hold placeholders — `{prompt}`, `{id}`, `{provider_session_id}`,
//! `{project}`, `{cwd}` — replaced by whole values: a prompt with spaces, quotes or newlines
//! stays inside the one element it was placed in. `{{` and `}}` are literal braces.
//!
//! Providers come built in (`shell`, and presets for `claude`, `codex`, `gemini`) and from
//! `[providers.NAME]` tables in config.toml, which may also redefine a built-in. Templates are
//! checked when the configuration loads: an unknown placeholder, a prompt that would go
//! nowhere, or a malformed JSON pointer stops the daemon with the provider and the line.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Longest argv element `execve` accepts: Linux caps each at 32 pages (`MAX_ARG_STRLEN`),
/// counting its terminating NUL. Other systems cap only argv and the environment together
/// (`ARG_MAX`, about 1 MiB on macOS), which spawning reports if a prompt passes it.
#[cfg(target_os = "linux")]
pub const MAX_ARGV_ELEMENT_BYTES: usize = 32 * 4096 - 1;
#[cfg(not(target_os = "linux"))]
pub const MAX_ARGV_ELEMENT_BYTES: usize = usize::MAX;

/// Placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &["prompt", "id", "provider_session_id", "project", "cwd"];

/// How the prompt reaches the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptChannel {
    /// As (part of) an argv element, through `{prompt}`.
    #[default]
    Argv,
    /// On the process's standard input, which is then closed.
    Stdin,
}

/// What the process prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Plain text, kept as it is.
    #[default]
    Text,
    /// One JSON value per line; the provider's session id and "needs input" signals are read
    /// from it (see `session_id_pointer`, `needs_input_pointer`).
    Jsonl,
}

/// One `[providers.NAME]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [providers.NAME] table with at least command = [\"program\", ...]"
)]
pub struct ProviderConfig {
    /// The argv for a turn of a session the provider already knows (it has reported its own
    /// session id), or for every turn when `first_command` is absent.
    pub command: Vec<String>,
    /// The argv for a session's first turn, before the provider has named the session.
    #[serde(default)]
    pub first_command: Option<Vec<String>>,
    #[serde(default)]
    pub prompt: PromptChannel,
    #[serde(default)]
    pub output: OutputFormat,
    /// JSON pointer (RFC 6901) to the provider's session id in a `jsonl` line, e.g.
    /// `/session_id`.
    #[serde(default)]
    pub session_id_pointer: Option<String>,
    /// JSON pointer to a field whose presence (or, with `needs_input_value`, whose value)
    /// marks a line asking the user for input or approval.
    #[serde(default)]
    pub needs_input_pointer: Option<String>,
    #[serde(default)]
    pub needs_input_value: Option<String>,
    /// Environment added to the process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A turn running longer than this is stopped and fails.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Values substituted into a template.
#[derive(Clone, Debug, Default)]
pub struct Vars<'a> {
    pub prompt: &'a str,
    pub id: &'a str,
    pub provider_session_id: Option<&'a str>,
    pub project: &'a str,
    pub cwd: &'a str,
}

/// A template that cannot be used; `element` is the offending argv element.
#[derive(Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub message: String,
    pub element: Option<String>,
}

fn template_error(message: String, element: Option<&str>) -> TemplateError {
    TemplateError {
        message,
        element: element.map(str::to_string),
    }
}

/// The pieces of one argv element: literal text and placeholder names.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(String),
    Var(&'a str),
}

fn parse_element(element: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = element;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            text.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            text.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(template_error(
                "a lone '}' (write '}}' for a literal brace)".into(),
                Some(element),
            ));
        } else {
            let Some(end) = tail.find('}') else {
                return Err(template_error(
                    "an unclosed '{' (write '{{' for a literal brace)".into(),
                    Some(element),
                ));
            };
            let name = &tail[1..end];
            if !PLACEHOLDERS.contains(&name) {
                return Err(template_error(
                    format!(
                        "unknown placeholder {{{name}}}; the placeholders are {}",
                        PLACEHOLDERS
                            .iter()
                            .map(|p| format!("{{{p}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Some(element),
                ));
            }
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Var(name));
            rest = &tail[end + 1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn uses(template: &[String], placeholder: &str) -> bool {
    template.iter().any(|e| {
        parse_element(e)
            .map(|pieces| pieces.contains(&Piece::Var(placeholder)))
            .unwrap_or(false)
    })
}

fn check_pointer(key: &str, pointer: &Option<String>) -> Result<(), TemplateError> {
    match pointer {
        Some(p) if !(p.is_empty() || p.starts_with('/')) => Err(template_error(
            format!(
                "{key} = {p:?} is not a JSON pointer; it must start with '/', e.g. \"/session_id\""
            ),
            None,
        )),
        _ => Ok(()),
    }
}

impl ProviderConfig {
    /// `command`, and `first_command` when there is one, each with its key.
    fn templates(&self) -> impl Iterator<Item = (&'static str, &Vec<String>)> {
        std::iter::once(("command", &self.command))
            .chain(self.first_command.iter().map(|t| ("first_command", t)))
    }

    /// Checks everything that can be checked before a turn runs.
    pub fn validate(&self) -> Result<(), TemplateError> {
        for (key, template) in self.templates() {
            if template.is_empty() {
                return Err(template_error(
                    format!("{key} is empty; it needs at least the program to run"),
                    None,
                ));
            }
            for element in template {
                parse_element(element)?;
            }
            if template[0].is_empty() {
                return Err(template_error(
                    format!("{key}'s program is an empty string; name the program to run"),
                    None,
                ));
            }
            if key == "first_command" && uses(template, "provider_session_id") {
                return Err(template_error(
                    "first_command has {provider_session_id}, but it runs exactly while the \
                     provider has not named the session; remove it there (command, used \
                     once the provider has, may have it)"
                        .into(),
                    None,
                ));
            }
            if parse_element(&template[0])?.contains(&Piece::Var("prompt")) {
                return Err(template_error(
                    format!(
                        "{key} would run the prompt as the program; put {{prompt}} in an argument"
                    ),
                    Some(&template[0]),
                ));
            }
            if self.prompt == PromptChannel::Argv && !uses(template, "prompt") {
                return Err(template_error(
                    format!(
                        "{key} has no {{prompt}} but prompt = \"argv\": the prompt would go \
                         nowhere; add {{prompt}} to an argument, or set prompt = \"stdin\""
                    ),
                    None,
                ));
            }
        }
        check_pointer("session_id_pointer", &self.session_id_pointer)?;
        check_pointer("needs_input_pointer", &self.needs_input_pointer)?;
        if self.output == OutputFormat::Text
            && (self.session_id_pointer.is_some() || self.needs_input_pointer.is_some())
        {
            return Err(template_error(
                "session_id_pointer and needs_input_pointer read JSON lines; set output = \
                 \"jsonl\" or remove them"
                    .into(),
                None,
            ));
        }
        // A session learns its provider's id only from the provider's output, through
        // session_id_pointer: without one, `command` would never run after `first_command`, and
        // a `command` needing the id would fail every turn.
        if uses(&self.command, "provider_session_id") && self.first_command.is_none() {
            return Err(template_error(
                "command has {provider_session_id}, which a session has only once its \
                 provider has named it; add a first_command without it for the first turn, \
                 and session_id_pointer to read the id"
                    .into(),
                None,
            ));
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(template_error(
                    format!(
                        "env key {name:?} cannot name an environment variable (empty, or \
                         holding '=' or NUL); write it as NAME = \"value\""
                    ),
                    None,
                ));
            }
            if value.contains('\0') {
                return Err(template_error(
                    format!("env.{name} holds a NUL byte, which an environment cannot carry"),
                    None,
                ));
            }
        }
        if self.timeout_secs == Some(0) {
            return Err(template_error(
                "timeout_secs = 0 would stop every turn at once; remove it for no limit".into(),
                None,
            ));
        }
        Ok(())
    }

    /// What in a valid provider is surely a mistake, though its turns run: settings that can
    /// never take effect. Logged at start and printed by `sessiond --check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.first_command.is_some() && self.session_id_pointer.is_none() {
            warnings.push(
                "first_command runs until the provider names the session, which only \
                 session_id_pointer (with output = \"jsonl\") reads: without it every turn \
                 runs first_command and command never runs; set session_id_pointer, or remove \
                 first_command"
                    .to_string(),
            );
        }
        for (key, template) in self.templates() {
            if let Some(open) = prompt_open_to_options(template) {
                warnings.push(format!(
                    "{key}: {open:?} hands the prompt over as an argument of its own, so a \
                     prompt starting with '-' (a Markdown list, \"--help\") may be read by \
                     {:?} as an option; unless it never parses options there, put \"--\" \
                     before it, or join it to its option (\"--message={{prompt}}\")",
                    template[0]
                ));
            }
        }
        if self.needs_input_value.is_some() && self.needs_input_pointer.is_none() {
            warnings.push(
                "needs_input_value is ignored without a needs_input_pointer to compare it with; \
                 set needs_input_pointer, or remove needs_input_value"
                    .to_string(),
            );
        }
        warnings
    }

    /// Why `prompt` can never reach this provider's process, if it cannot. In an argv element
    /// (through `{prompt}`, whatever `prompt` says about stdin) it is part of a C string, so a
    /// NUL byte would cut it short, and Linux refuses an element over
    /// [`MAX_ARGV_ELEMENT_BYTES`]; refusing at submit says so before anything is queued,
    /// instead of failing the turn later. Standard input carries any bytes.
    pub fn refuse_prompt(&self, prompt: &str) -> Option<String> {
        // Each element holding {prompt}: its literal text and how often the prompt appears.
        // (Other placeholders in the same element are short, and spawning reports the
        // kernel's refusal if they tip it over.)
        let elements: Vec<(usize, usize)> = std::iter::once(&self.command)
            .chain(&self.first_command)
            .flatten()
            .filter_map(|element| parse_element(element).ok())
            .map(|pieces| {
                pieces
                    .iter()
                    .fold((0, 0), |(text, times), piece| match piece {
                        Piece::Text(t) => (text + t.len(), times),
                        Piece::Var("prompt") => (text, times + 1),
                        Piece::Var(_) => (text, times),
                    })
            })
            .filter(|&(_, times)| times > 0)
            .collect();
        if elements.is_empty() {
            return None;
        }
        if prompt.contains('\0') {
            return Some(
                "it contains a NUL byte, which a command-line argument cannot hold; remove it, \
                 or use a provider that reads the prompt on stdin (prompt = \"stdin\", without \
                 {prompt} in its command)"
                    .into(),
            );
        }
        let longest = elements
            .iter()
            .map(|&(text, times)| text.saturating_add(times.saturating_mul(prompt.len())))
            .max()
            .unwrap_or(0);
        (longest > MAX_ARGV_ELEMENT_BYTES).then(|| {
            format!(
                "it is {} bytes, and this provider passes the prompt in a command-line argument \
                 of {longest} bytes, over the system's limit of {MAX_ARGV_ELEMENT_BYTES}; \
                 shorten it (put long material in a file and refer to it), or use a provider \
                 that reads the prompt on stdin (prompt = \"stdin\")",
                prompt.len()
            )
        })
    }

    /// The template a turn uses: `first_command` until the provider has named the session.
    pub fn template(&self, bound: bool) -> &[String] {
        match (&self.first_command, bound) {
            (Some(first), false) => first,
            _ => &self.command,
        }
    }

    /// The argv for a turn. Fails when the template needs a value the session lacks (the
    /// provider's session id before the provider has reported one).
    pub fn argv(&self, vars: &Vars) -> Result<Vec<String>, TemplateError> {
        let template = self.template(vars.provider_session_id.is_some());
        template
            .iter()
            .map(|element| {
                let mut out = String::new();
                for piece in parse_element(element)? {
                    match piece {
                        Piece::Text(t) => out.push_str(&t),
                        Piece::Var("prompt") => out.push_str(vars.prompt),
                        Piece::Var("id") => out.push_str(vars.id),
                        Piece::Var("project") => out.push_str(vars.project),
                        Piece::Var("cwd") => out.push_str(vars.cwd),
                        Piece::Var("provider_session_id") => {
                            out.push_str(vars.provider_session_id.ok_or_else(|| {
                                template_error(
                                    "this turn's command needs {provider_session_id}, but the \
                                     provider has not reported one for this session yet; give \
                                     the provider a first_command without it"
                                        .into(),
                                    Some(element),
                                )
                            })?)
                        }
                        Piece::Var(other) => unreachable!("validated placeholder {other}"),
                    }
                }
                Ok(out)
            })
            .collect()
    }
}

/// What a `jsonl` provider's output said about its session.
#[derive(Debug, PartialEq, Eq)]
pub enum Signal {
    /// The provider's own id for the session.
    SessionId(String),
    /// Whether this line asks the user for input (true) or is ordinary progress (false).
    NeedsInput(bool),
}

/// Longest provider session id kept: ids are UUIDs or similar; a longer one is surely not.
pub const MAX_SESSION_ID_BYTES: usize = 1024;

/// Whether `id` can be handed back to the provider (in an argv element, the environment)
/// and shown: not empty, no control characters (a NUL would make every later turn fail to
/// start), not absurdly long.
fn usable_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_SESSION_ID_BYTES && !id.chars().any(char::is_control)
}

/// Longest line the scanner will parse; longer ones are stored but not interpreted, so a
/// provider printing a gigabyte without a newline costs no memory here.
pub const MAX_SCANNED_LINE: usize = 1024 * 1024;

/// Splits a `jsonl` provider's stdout into lines and reads the configured pointers from each.
pub struct LineScanner<'a> {
    provider: &'a ProviderConfig,
    line: Vec<u8>,
    /// The current line outgrew `MAX_SCANNED_LINE` and is being skipped.
    skipping: bool,
}

impl<'a> LineScanner<'a> {
    pub fn new(provider: &'a ProviderConfig) -> Self {
        Self {
            provider,
            line: Vec::new(),
            skipping: false,
        }
    }

    /// Feeds a chunk of output; returns the signals of every line it completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Signal> {
        let mut signals = Vec::new();
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let complete = piece.ends_with(b"\n");
            if !self.skipping {
                if self.line.len() + piece.len() > MAX_SCANNED_LINE {
                    self.skipping = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(piece);
                }
            }
            if complete {
                if !self.skipping {
                    self.scan(&mut signals);
                }
                self.line.clear();
                self.skipping = false;
            }
        }
        signals
    }

    /// Ends the output: a last line without a newline is still a line (a provider that
    /// writes one JSON object and exits may not end it).
    pub fn finish(&mut self) -> Vec<Signal> {
        let mut signals = Vec::new();
        if !self.skipping && !self.line.is_empty() {
            self.scan(&mut signals);
        }
        self.line.clear();
        self.skipping = false;
        signals
    }

    fn scan(&self, signals: &mut Vec<Signal>) {
        let line = self
            .line
            .strip_prefix(b"\xEF\xBB\xBF")
            .unwrap_or(&self.line);
        if line.trim_ascii().is_empty() {
            return;
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
            // Not JSON: progress text, an ordinary line, which ends a wait for input.
            if self.provider.needs_input_pointer.is_some() {
                signals.push(Signal::NeedsInput(false));
            }
            return;
        };
        if let Some(pointer) = &self.provider.session_id_pointer {
            match value.pointer(pointer).and_then(|v| v.as_str()) {
                Some(id) if usable_session_id(id) => {
                    signals.push(Signal::SessionId(id.to_string()))
                }
                Some("") | None => {}
                Some(id) => tracing::warn!(
                    pointer = %pointer,
                    "the provider printed a session id sessiond cannot pass back to it (control \
                     characters, or over {MAX_SESSION_ID_BYTES} bytes); ignored: {:?}",
                    id.chars().take(80).collect::<String>()
                ),
            }
        }
        if let Some(pointer) = &self.provider.needs_input_pointer {
            let found = value.pointer(pointer);
            let asks = match (&self.provider.needs_input_value, found) {
                (_, None) => false,
                // A string is compared as text; anything else as its JSON (`true`, `1`).
                (Some(expected), Some(serde_json::Value::String(v))) => v == expected,
                (Some(expected), Some(v)) => {
                    serde_json::from_str::<serde_json::Value>(expected).is_ok_and(|e| e == *v)
                }
                (None, Some(v)) => !(v.is_null() || v == &serde_json::Value::Bool(false)),
            };
            signals.push(Signal::NeedsInput(asks));
        }
    }
}

/// The first element of `template` that begins with `{prompt}` and has no `--` (the end of
/// options) before it: there a prompt starting with `-` would be parsed as an option.
fn prompt_open_to_options(template: &[String]) -> Option<&str> {
    template
        .iter()
        .skip(1)
        .take_while(|element| element.as_str() != "--")
        .find(|element| {
            parse_element(element).is_ok_and(|pieces| pieces.first() == Some(&Piece::Var("prompt")))
        })
        .map(String::as_str)
}

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// An agent CLI preset: JSON-lines output whose lines carry the provider's session id at
/// `session_id_pointer`; `first` for a session's first turn, `resume` after.
fn agent(first: &[&str], resume: &[&str], session_id_pointer: &str) -> ProviderConfig {
    ProviderConfig {
        command: argv(resume),
        first_command: Some(argv(first)),
        prompt: PromptChannel::Argv,
        output: OutputFormat::Jsonl,
        session_id_pointer: Some(session_id_pointer.into()),
        needs_input_pointer: None,
        needs_input_value: None,
        env: BTreeMap::new(),
        timeout_secs: None,
    }
}

/// The providers every daemon has. The agent presets follow each CLI's documented
/// non-interactive mode: run one prompt, print JSON lines, and resume a session by its id.
/// They work when the program is installed; a turn on a missing program fails with
/// `provider_unavailable` naming it.
pub fn builtin() -> BTreeMap<String, ProviderConfig> {
    let mut all = BTreeMap::new();
    all.insert(
        "shell".to_string(),
        ProviderConfig {
            // `--`: a prompt starting with `-` is the command, not an option of sh.
            command: argv(&["sh", "-c", "--", "{prompt}"]),
            first_command: None,
            prompt: PromptChannel::Argv,
            output: OutputFormat::Text,
            session_id_pointer: None,
            needs_input_pointer: None,
            needs_input_value: None,
            env: BTreeMap::new(),
            timeout_secs: None,
        },
    );
    // Each preset hands over the prompt so that one starting with `-` (a pasted Markdown
    // list, "--help") stays the prompt: after `--` where the prompt is a positional argument,
    // joined to its option with `=` where it is an option's value.
    //
    // Claude Code: `-p` (print) answers one prompt, a positional argument; stream-json emits
    // JSON lines whose objects carry `session_id`; `--resume ID` continues that session.
    all.insert(
        "claude".to_string(),
        agent(
            &[
                "claude",
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--",
                "{prompt}",
            ],
            &[
                "claude",
                "-p",
                "--resume",
                "{provider_session_id}",
                "--output-format",
                "stream-json",
                "--verbose",
                "--",
                "{prompt}",
            ],
            "/session_id",
        ),
    );
    // Codex: `exec --json` runs one prompt and prints events; the first carries the thread
    // id; `exec resume ID` continues it.
    all.insert(
        "codex".to_string(),
        agent(
            &["codex", "exec", "--json", "--", "{prompt}"],
            &[
                "codex",
                "exec",
                "--json",
                "resume",
                "{provider_session_id}",
                "--",
                "{prompt}",
            ],
            "/thread_id",
        ),
    );
    // Gemini CLI: `--prompt` runs one prompt; stream-json prints JSON lines with
    // `session_id`; `--resume ID` continues that session.
    all.insert(
        "gemini".to_string(),
        agent(
            &[
                "gemini",
                "--output-format",
                "stream-json",
                "--prompt={prompt}",
            ],
            &[
                "gemini",
                "--resume",
                "{provider_session_id}",
                "--output-format",
                "stream-json",
                "--prompt={prompt}",
            ],
            "/session_id",
        ),
    );
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(prompt: &'a str, psid: Option<&'a str>) -> Vars<'a> {
        Vars {
            prompt,
            id: "0b8e3c1a-6a0e-4b7e-9d51-3c2f1e4d5a6b",
            provider_session_id: psid,
            project: "/p",
            cwd: "/p/src",
        }
    }

    #[test]
    fn scanner_reads_session_ids_and_input_requests_across_chunks() {
        let p = ProviderConfig {
            output: OutputFormat::Jsonl,
            session_id_pointer: Some("/session_id".into()),
            needs_input_pointer: Some("/type".into()),
            needs_input_value: Some("permission_request".into()),
            ..builtin()["shell"].clone()
        };
        let mut scanner = LineScanner::new(&p);
        assert!(
            scanner.feed(b"{\"session_id\": \"ab").is_empty(),
            "line not complete"
        );
        assert_eq!(
            scanner
                .feed(b"c\", \"type\": \"init\"}\nnot json\n{\"type\":\"permission_request\"}\n"),
            vec![
                Signal::SessionId("abc".into()),
                Signal::NeedsInput(false),
                // Progress text is an ordinary line too: it ends a wait for input.
                Signal::NeedsInput(false),
                Signal::NeedsInput(true)
            ]
        );
        // A last line without its newline still counts, once the output ends; a blank one
        // says nothing.
        assert!(scanner.feed(b"\n  \n{\"session_id\": \"last\"}").is_empty());
        assert_eq!(
            scanner.finish(),
            vec![Signal::SessionId("last".into()), Signal::NeedsInput(false)]
        );
        assert!(scanner.finish().is_empty(), "nothing is scanned twice");
    }

    #[test]
    fn scanner_refuses_session_ids_it_could_not_hand_back_and_reads_odd_lines() {
        let p = ProviderConfig {
            output: OutputFormat::Jsonl,
            session_id_pointer: Some("/session_id".into()),
            needs_input_pointer: Some("/needs_input".into()),
            needs_input_value: Some("true".into()),
            ..builtin()["shell"].clone()
        };
        let mut scanner = LineScanner::new(&p);
        // A NUL would make every later turn fail to start; a newline would break `show`.
        for bad in [r#""a\u0000b""#, r#""a\nb""#, r#""\u001b[31mred""#] {
            let line = format!("{{\"session_id\": {bad}}}\n");
            assert_eq!(
                scanner.feed(line.as_bytes()),
                vec![Signal::NeedsInput(false)]
            );
        }
        let long = format!(
            "{{\"session_id\": \"{}\"}}\n",
            "x".repeat(MAX_SESSION_ID_BYTES + 1)
        );
        assert_eq!(
            scanner.feed(long.as_bytes()),
            vec![Signal::NeedsInput(false)]
        );
        // A byte-order mark before the JSON, and a value that is not a string, compared as
        // its JSON text.
        assert_eq!(
            scanner.feed(b"\xEF\xBB\xBF{\"session_id\": \"bom\", \"needs_input\": true}\n"),
            vec![Signal::SessionId("bom".into()), Signal::NeedsInput(true)]
        );
    }

    #[test]
    fn presets_keep_a_prompt_that_looks_like_an_option_a_prompt() {
        for (name, provider) in builtin() {
            assert!(
                provider.warnings().is_empty(),
                "{name}: {:?}",
                provider.warnings()
            );
            for psid in [None, Some("abc")] {
                let argv = provider.argv(&vars("--help", psid)).unwrap();
                let at = argv.iter().position(|a| a.ends_with("--help")).unwrap();
                assert!(
                    argv[..at].contains(&"--".to_string()) || argv[at].starts_with("--prompt="),
                    "{name}: {argv:?}"
                );
            }
        }
        // A template of one's own that leaves the prompt open is warned of.
        let open = ProviderConfig {
            command: argv(&["aider", "--message", "{prompt}"]),
            ..builtin()["shell"].clone()
        };
        let warnings = open.warnings();
        assert!(
            warnings.iter().any(|w| w.contains("put \"--\" before it")),
            "{warnings:?}"
        );
        let joined = ProviderConfig {
            command: argv(&["aider", "--message={prompt}"]),
            ..open.clone()
        };
        assert!(joined.warnings().is_empty());
    }

    #[test]
    fn scanner_skips_an_endless_line_without_buffering_it() {
        let p = ProviderConfig {
            output: OutputFormat::Jsonl,
            session_id_pointer: Some("/id".into()),
            ..builtin()["shell"].clone()
        };
        let mut scanner = LineScanner::new(&p);
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..40 {
            assert!(scanner.feed(&chunk).is_empty());
            assert!(scanner.line.len() <= MAX_SCANNED_LINE);
        }
        assert_eq!(
            scanner.feed(b"\n{\"id\":\"ok\"}\n"),
            vec![Signal::SessionId("ok".into())]
        );
    }

    #[test]
    fn every_builtin_is_valid() {
        for (name, provider) in builtin() {
            provider
                .validate()
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    #[test]
    fn prompt_stays_one_argv_element_whatever_it_contains() {
        let shell = &builtin()["shell"];
        let nasty = "echo hi; rm -rf / && $(reboot) `id` \"quoted\" 'single'\nnext line {cwd}";
        assert_eq!(
            shell.argv(&vars(nasty, None)).unwrap(),
            vec!["sh".to_string(), "-c".into(), "--".into(), nasty.into()]
        );
    }

    #[test]
    fn prompts_an_argument_cannot_carry_are_refused_and_stdin_takes_anything() {
        let shell = &builtin()["shell"];
        assert!(shell.refuse_prompt("fine").is_none());
        assert!(shell.refuse_prompt("a\0b").unwrap().contains("NUL"));
        let at_limit = "x".repeat(MAX_ARGV_ELEMENT_BYTES);
        assert!(shell.refuse_prompt(&at_limit).is_none());
        let over = "x".repeat(MAX_ARGV_ELEMENT_BYTES + 1);
        assert!(shell.refuse_prompt(&over).unwrap().contains("stdin"));
        // Literal text in the prompt's element counts against the limit.
        let prefixed = ProviderConfig {
            command: argv(&["tool", "--prompt={prompt}"]),
            ..shell.clone()
        };
        assert!(prefixed.refuse_prompt(&at_limit).is_some());
        let twice = ProviderConfig {
            command: argv(&["tool", "{prompt}{prompt}"]),
            ..shell.clone()
        };
        let half = "x".repeat(MAX_ARGV_ELEMENT_BYTES / 2 + 1);
        assert!(twice.refuse_prompt(&half).is_some());
        let stdin = ProviderConfig {
            command: argv(&["cat"]),
            prompt: PromptChannel::Stdin,
            ..shell.clone()
        };
        assert!(stdin.refuse_prompt(&format!("{over}\0")).is_none());
        // Reading stdin does not help a prompt that is also put in an argument.
        let both = ProviderConfig {
            command: argv(&["tool", "--title={prompt}"]),
            prompt: PromptChannel::Stdin,
            ..shell.clone()
        };
        assert!(both.refuse_prompt("a\0b").is_some());
    }

    #[test]
    fn placeholders_expand_inside_elements_and_braces_escape() {
        let p = ProviderConfig {
            command: argv(&["tool", "--dir={cwd}", "{{literal}}", "{prompt}"]),
            ..builtin()["shell"].clone()
        };
        p.validate().unwrap();
        assert_eq!(
            p.argv(&vars("go", None)).unwrap(),
            vec!["tool", "--dir=/p/src", "{literal}", "go"]
        );
    }

    #[test]
    fn first_command_is_used_until_the_provider_names_the_session() {
        let claude = &builtin()["claude"];
        let first = claude.argv(&vars("hi", None)).unwrap();
        assert!(!first.contains(&"--resume".to_string()));
        let later = claude.argv(&vars("hi", Some("abc"))).unwrap();
        assert_eq!(later[2..4], ["--resume".to_string(), "abc".to_string()]);
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        let base = builtin()["shell"].clone();
        let with = |command: &[&str]| ProviderConfig {
            command: argv(command),
            ..base.clone()
        };
        let cases: &[(&[&str], &str)] = &[
            (&["x", "{prompt", "y"], "unclosed"),
            (&["x", "{promt}"], "unknown placeholder {promt}"),
            (&["x", "a}b", "{prompt}"], "lone '}'"),
            (&["{prompt}"], "as the program"),
            (&["x", "--flag"], "would go nowhere"),
            (&[], "is empty"),
        ];
        for (command, expect) in cases {
            let err = with(command).validate().unwrap_err();
            assert!(err.message.contains(expect), "{command:?}: {}", err.message);
        }
        let refused = |p: ProviderConfig, expect: &str| {
            let err = p.validate().unwrap_err();
            assert!(err.message.contains(expect), "{p:?}: {}", err.message);
        };
        let jsonl = ProviderConfig {
            output: OutputFormat::Jsonl,
            session_id_pointer: Some("/id".into()),
            ..base.clone()
        };
        // Templates no session could ever run.
        refused(with(&["", "{prompt}"]), "empty string");
        refused(
            ProviderConfig {
                command: argv(&["x", "{provider_session_id}", "{prompt}"]),
                ..jsonl.clone()
            },
            "add a first_command",
        );
        refused(
            ProviderConfig {
                first_command: Some(argv(&["x", "{provider_session_id}", "{prompt}"])),
                ..jsonl.clone()
            },
            "first_command has {provider_session_id}",
        );
        // Settings that never take effect are warned of, not refused: the turns run.
        let dead_command = ProviderConfig {
            first_command: Some(argv(&["x", "{prompt}"])),
            ..base.clone()
        };
        dead_command.validate().unwrap();
        assert!(dead_command.warnings()[0].contains("command never runs"));
        let dead_value = ProviderConfig {
            needs_input_value: Some("ask".into()),
            ..jsonl.clone()
        };
        dead_value.validate().unwrap();
        assert!(dead_value.warnings()[0].contains("ignored"));
        for (name, provider) in builtin() {
            assert!(provider.warnings().is_empty(), "{name}");
        }
        for key in ["", "A=B", "A\0"] {
            refused(
                ProviderConfig {
                    env: BTreeMap::from([(key.to_string(), "1".to_string())]),
                    ..base.clone()
                },
                "cannot name an environment variable",
            );
        }
        refused(
            ProviderConfig {
                env: BTreeMap::from([("A".to_string(), "x\0y".to_string())]),
                ..base.clone()
            },
            "NUL",
        );
        // Resuming by the provider's id is fine with a first turn that learns it.
        let resumes = ProviderConfig {
            command: argv(&["x", "--resume", "{provider_session_id}", "{prompt}"]),
            first_command: Some(argv(&["x", "{prompt}"])),
            ..jsonl.clone()
        };
        resumes.validate().unwrap();
        let bad_pointer = ProviderConfig {
            output: OutputFormat::Jsonl,
            session_id_pointer: Some("session_id".into()),
            ..base.clone()
        };
        assert!(bad_pointer
            .validate()
            .unwrap_err()
            .message
            .contains("JSON pointer"));
        let text_with_pointer = ProviderConfig {
            session_id_pointer: Some("/id".into()),
            ..base
        };
        assert!(text_with_pointer
            .validate()
            .unwrap_err()
            .message
            .contains("jsonl"));
    }
}
