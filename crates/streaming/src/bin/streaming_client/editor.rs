//! The chat's line editor, when standard input and output are a terminal: what the user
//! types stays on its own line at the bottom while everything the session prints appears
//! above it (rustyline's external printer), Ctrl+C and Ctrl+D are keys the editor reports
//! (an interrupt, the end of input), and a sent line is erased so the room's echo of it,
//! with its time and name, is the one copy on screen.
//!
//! The library never sees any of this: it gets an [`Input`] of lines, an interrupt sender
//! and a writer, exactly as scripted tests give it.

use std::io::Write;

use rustyline::{DefaultEditor, error::ReadlineError};
use streaming_service::client::Input;
use tokio::sync::mpsc;

/// The editor's prompt.
const PROMPT: &str = "> ";

/// Moves the cursor up to the line just submitted and clears it.
const ERASE_SUBMITTED_LINE: &str = "\x1b[1A\x1b[2K\r";

/// Starts the editor on its own thread. Returns the lines typed and a writer that prints
/// above the line being typed. Each Ctrl+C is sent to `interrupts`; Ctrl+D (or a terminal
/// error) ends the input.
pub fn start(interrupts: mpsc::UnboundedSender<()>) -> anyhow::Result<(Input, EditorOutput)> {
    let mut editor = DefaultEditor::new()?;
    let printer = editor.create_external_printer()?;
    let (sender, lines) = mpsc::channel(1);
    // A plain thread, not tokio's blocking pool: a readline still waiting when the session
    // ends must not hold up the process's exit (main restores the terminal's mode).
    std::thread::spawn(move || {
        loop {
            match editor.readline(PROMPT) {
                Ok(line) => {
                    print!("{ERASE_SUBMITTED_LINE}");
                    let _ = std::io::stdout().flush();
                    if sender.blocking_send(line).is_err() {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted) => {
                    if interrupts.send(()).is_err() {
                        break;
                    }
                }
                // Ctrl+D, or a terminal that went away: the end of input.
                Err(_) => break,
            }
        }
    });
    let output = EditorOutput {
        printer: Box::new(printer),
        pending: Vec::new(),
    };
    Ok((Input::from_channel(lines), output))
}

/// A writer that hands whole lines to the editor's printer, which shows them above the
/// line being typed.
pub struct EditorOutput {
    printer: Box<dyn rustyline::ExternalPrinter + Send>,
    /// Bytes of a line not finished yet.
    pending: Vec<u8>,
}

impl std::fmt::Debug for EditorOutput {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EditorOutput")
            .finish_non_exhaustive()
    }
}

impl EditorOutput {
    fn print(&mut self, text: Vec<u8>) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(&text).into_owned();
        self.printer.print(text).map_err(std::io::Error::other)
    }
}

impl Write for EditorOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        if let Some(last_newline) = self.pending.iter().rposition(|&byte| byte == b'\n') {
            let rest = self.pending.split_off(last_newline + 1);
            let lines = std::mem::replace(&mut self.pending, rest);
            self.print(lines)?;
        }
        Ok(bytes.len())
    }

    /// A prompt written without a newline (the upload's question) is shown as a line of
    /// its own: the answer is typed on the editor's line below it.
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let mut line = std::mem::take(&mut self.pending);
            line.push(b'\n');
            self.print(line)?;
        }
        Ok(())
    }
}

/// The terminal's mode as it was before the editor started, put back when dropped: the
/// editor thread may be inside a readline (raw mode) when the session ends.
pub struct TerminalGuard {
    #[cfg(unix)]
    saved: Option<nix::sys::termios::Termios>,
}

impl TerminalGuard {
    /// Remembers standard input's terminal mode.
    pub fn save() -> Self {
        Self {
            #[cfg(unix)]
            saved: nix::sys::termios::tcgetattr(std::io::stdin()).ok(),
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        // The prompt's line is cleared so the shell's prompt starts clean.
        print!("\r\x1b[2K");
        let _ = std::io::stdout().flush();
        #[cfg(unix)]
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSADRAIN,
                saved,
            );
        }
    }
}
