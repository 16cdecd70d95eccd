//! What `random_client` does: ask for whatever the flags left out, with the old script's
//! prompts, then print the stream as the old script's table until it ends or the user
//! presses Ctrl+C. Written against any input and output so tests can script both.

use std::{
    future::Future,
    io::{self, BufRead, Write},
};

use grpc_suite::cli::Connection;
use grpc_suite::{cli::status_error, random as pb};
use pb::random_number_service_client::RandomNumberServiceClient;

/// The old script's prompts, in the order it asked them.
pub const PROMPTS: [&str; 4] = [
    "Enter minimum value:",
    "Enter maximum value:",
    "Enter how many numbers to generate:",
    "Enter delay between numbers (milliseconds):",
];

/// The request's fields as the flags gave them; `None` means "ask".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Choices {
    /// Smallest number that may be drawn.
    pub min: Option<i32>,
    /// Largest number that may be drawn.
    pub max: Option<i32>,
    /// How many numbers to draw.
    pub count: Option<i32>,
    /// Milliseconds between numbers.
    pub delay: Option<i32>,
}

/// The old script's banner, shown before its first question.
pub const BANNER: [&str; 2] = [
    "Random Number Streaming Client",
    "-----------------------------",
];

/// The old script's line between the answers and the table.
pub const RECEIVING: &str = "Receiving random numbers:";

/// What the old script printed when the user pressed Ctrl+C.
pub const TERMINATED: &str = "Client terminated by user";

/// Checks the fields the flags gave against each other, before anything is asked: the
/// range must not be empty and neither count nor delay negative. The reason names the
/// flags.
pub fn check_given(given: Choices) -> Result<(), String> {
    if let (Some(min), Some(max)) = (given.min, given.max)
        && min > max
    {
        return Err(format!("--min {min} is greater than --max {max}"));
    }
    if let Some(count) = given.count.filter(|count| *count < 0) {
        return Err(format!("--count {count} is negative"));
    }
    if let Some(delay) = given.delay.filter(|delay| *delay < 0) {
        return Err(format!("--delay {delay} is negative"));
    }
    Ok(())
}

/// Completes `given` by asking for each missing field on `out` and reading the answer from
/// `input`, as the old script did: its banner first, then its prompts, then
/// `Receiving random numbers:`. Each answer is checked as soon as it is given (a number;
/// max not below min, min not above a max from the flags; count and delay not negative)
/// and re-asked with a short reason, so the user never answers everything only to start
/// again. `None` means the input ended first: the user is done, which is not an error.
///
/// The server still checks its own limits (the largest count and delay it allows): it
/// names the field and its limits, and one place deciding those keeps the client from
/// disagreeing with it.
pub fn complete_request(
    given: Choices,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> io::Result<Option<pb::RandomNumberRequest>> {
    let mut values = [given.min, given.max, given.count, given.delay];
    let asking = values.iter().any(Option::is_none);
    if asking {
        for line in BANNER {
            writeln!(out, "{line}")?;
        }
    }
    for (index, prompt) in PROMPTS.iter().enumerate() {
        if values[index].is_some() {
            continue;
        }
        let known = values;
        let check = |value: i32| field_problem(index, value, known);
        match ask_number(prompt, input, out, check)? {
            Some(value) => values[index] = Some(value),
            None => {
                // Leave the terminal on a fresh line after the unanswered prompt.
                writeln!(out)?;
                return Ok(None);
            }
        }
    }
    if asking {
        // Piped answers are not echoed: the blank line also ends the last prompt's line.
        writeln!(out)?;
        writeln!(out, "{RECEIVING}")?;
    }
    let [min, max, count, delay] = values.map(Option::unwrap_or_default);
    Ok(Some(pb::RandomNumberRequest {
        min,
        max,
        count,
        delay,
    }))
}

/// Why `value` cannot be field `index` (0 min, 1 max, 2 count, 3 delay) given the fields
/// already known; `None` if it can.
fn field_problem(index: usize, value: i32, known: [Option<i32>; 4]) -> Option<String> {
    match index {
        0 => known[1]
            .filter(|max| value > *max)
            .map(|max| format!("the minimum must not be above the maximum ({max})")),
        1 => known[0]
            .filter(|min| value < *min)
            .map(|min| format!("the maximum must not be below the minimum ({min})")),
        2 if value < 0 => Some("the count must not be negative".to_owned()),
        3 if value < 0 => Some("the delay must not be negative".to_owned()),
        _ => None,
    }
}

/// Shows `prompt` until a line parses as a number that `check` accepts; `None` at end of
/// input.
fn ask_number(
    prompt: &str,
    input: &mut impl BufRead,
    out: &mut impl Write,
    check: impl Fn(i32) -> Option<String>,
) -> io::Result<Option<i32>> {
    let mut line = String::new();
    loop {
        write!(out, "{prompt} ")?;
        out.flush()?;
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let problem = match parse_number(&line) {
            Ok(value) => match check(value) {
                None => return Ok(Some(value)),
                Some(problem) => problem,
            },
            Err(reason) => reason,
        };
        writeln!(out, "{problem}; try again.")?;
    }
}

/// Reads one answer as a whole number, or says in a few words why it is not one.
pub fn parse_number(text: &str) -> Result<i32, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("please enter a whole number".to_owned());
    }
    text.parse::<i32>().map_err(|error| match error.kind() {
        std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
            format!("{text:?} is outside {}..={}", i32::MIN, i32::MAX)
        }
        _ => format!("{text:?} is not a whole number"),
    })
}

/// The old script's table, `Sequence | Number | Timestamp` over a dashed rule, with one
/// row per number, each value centred in its column.
///
/// The old script's columns were as wide as their headings and drifted out of line for
/// wider values. Here a column is as wide as its heading or the widest value the request
/// allows, whichever is wider, so every row lines up with the header; for everyday ranges
/// the output is exactly the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    sequence_width: usize,
    number_width: usize,
}

/// The old script's column headings and rule length.
const SEQUENCE: &str = "Sequence";
const NUMBER: &str = "Number";
const TIMESTAMP: &str = "Timestamp";
const OLD_RULE_WIDTH: usize = 35;
/// Every timestamp is `HH:MM:SS.mmm`.
const TIMESTAMP_WIDTH: usize = "14:25:30.123".len();

impl Table {
    /// The layout for the numbers `request` can produce: any number lies between min and
    /// max, so neither is ever narrower than it, and no sequence is wider than count.
    pub fn for_request(request: &pb::RandomNumberRequest) -> Self {
        let widest_number = request
            .min
            .to_string()
            .len()
            .max(request.max.to_string().len());
        Self {
            sequence_width: SEQUENCE.len().max(request.count.to_string().len()),
            number_width: NUMBER.len().max(widest_number),
        }
    }

    /// The heading line.
    pub fn header(&self) -> String {
        format!(
            "{SEQUENCE:^sequence_width$} | {NUMBER:^number_width$} | {TIMESTAMP}",
            sequence_width = self.sequence_width,
            number_width = self.number_width
        )
    }

    /// The dashed rule under the heading: as long as the old one, or the row if longer.
    pub fn rule(&self) -> String {
        let row_width = self.sequence_width + 3 + self.number_width + 3 + TIMESTAMP_WIDTH;
        "-".repeat(row_width.max(OLD_RULE_WIDTH))
    }

    /// One number's row.
    pub fn row(&self, response: &pb::RandomNumberResponse) -> String {
        format!(
            "{sequence:^sequence_width$} | {number:^number_width$} | {timestamp}",
            sequence = response.sequence,
            number = response.number,
            timestamp = response.timestamp,
            sequence_width = self.sequence_width,
            number_width = self.number_width
        )
    }
}

/// How a stream that printed without error ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server sent every number and closed the stream.
    Complete,
    /// The `interrupt` future fired (Ctrl+C in the binary); the stream was cancelled.
    Interrupted,
}

/// What [`print_stream`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Rows printed.
    pub received: u64,
    /// Why it stopped.
    pub ending: Ending,
}

/// Asks the server for `request` and prints the table to `out` as numbers arrive, until the
/// stream ends or `interrupt` resolves; then the call is dropped, which cancels it on the
/// server. A refusal, or an error part-way, is returned (rows already printed stay).
pub async fn print_stream(
    channel: impl Into<Connection>,
    request: pb::RandomNumberRequest,
    out: &mut impl Write,
    interrupt: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let table = Table::for_request(&request);
    let mut client = RandomNumberServiceClient::new(channel.into());
    let mut interrupt = std::pin::pin!(interrupt);
    let interrupted = |received| Summary {
        received,
        ending: Ending::Interrupted,
    };

    let mut stream = tokio::select! {
        // Polled first, so that an interrupt handler is in place from the first moment.
        biased;
        () = &mut interrupt => return Ok(interrupted(0)),
        response = client.get_random_numbers(request) => response.map_err(status_error)?.into_inner(),
    };
    writeln!(out, "{}", table.header())?;
    writeln!(out, "{}", table.rule())?;
    let mut received = 0;
    loop {
        tokio::select! {
            biased;
            () = &mut interrupt => return Ok(interrupted(received)),
            message = stream.message() => match message.map_err(status_error)? {
                Some(response) => {
                    writeln!(out, "{}", table.row(&response))?;
                    received += 1;
                }
                None => {
                    return Ok(Summary {
                        received,
                        ending: Ending::Complete,
                    });
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(given: Choices, input: &str) -> (Option<pb::RandomNumberRequest>, String) {
        let mut out = Vec::new();
        let request =
            complete_request(given, &mut input.as_bytes(), &mut out).expect("in-memory io");
        (request, String::from_utf8(out).expect("utf-8"))
    }

    /// With no flags, the four old prompts are asked in order and the answers fill the request.
    #[test]
    fn asks_every_missing_field_in_order() {
        let (request, shown) = complete(Choices::default(), "1\n10\n5\n0\n");
        assert_eq!(
            request,
            Some(pb::RandomNumberRequest {
                min: 1,
                max: 10,
                count: 5,
                delay: 0
            })
        );
        assert_eq!(
            shown,
            "Random Number Streaming Client\n-----------------------------\n\
             Enter minimum value: Enter maximum value: Enter how many numbers to generate: \
             Enter delay between numbers (milliseconds): \nReceiving random numbers:\n"
        );
    }

    /// Flags skip their prompts; only the missing fields are asked.
    #[test]
    fn flags_skip_their_prompts() {
        let given = Choices {
            min: Some(-3),
            count: Some(2),
            ..Choices::default()
        };
        let (request, shown) = complete(given, "3\n250\n");
        assert_eq!(
            request,
            Some(pb::RandomNumberRequest {
                min: -3,
                max: 3,
                count: 2,
                delay: 250
            })
        );
        assert_eq!(
            shown,
            "Random Number Streaming Client\n-----------------------------\n\
             Enter maximum value: Enter delay between numbers (milliseconds): \n\
             Receiving random numbers:\n"
        );
        let all = Choices {
            min: Some(0),
            max: Some(1),
            count: Some(1),
            delay: Some(0),
        };
        let (_, shown) = complete(all, "");
        assert_eq!(
            shown, "",
            "no prompt and no blank line when nothing was asked"
        );
    }

    /// A non-number is re-asked with a short reason; spaces and a plus sign are fine.
    #[test]
    fn non_numbers_are_asked_again() {
        let (request, shown) =
            complete(Choices::default(), "ten\n\n99999999999\n 10 \n+20\n3\n0\n");
        assert_eq!(
            request,
            Some(pb::RandomNumberRequest {
                min: 10,
                max: 20,
                count: 3,
                delay: 0
            })
        );
        let mut lines = shown.split("Enter minimum value: ").skip(1);
        assert_eq!(
            lines.next(),
            Some("\"ten\" is not a whole number; try again.\n")
        );
        assert_eq!(
            lines.next(),
            Some("please enter a whole number; try again.\n")
        );
        assert_eq!(
            lines.next(),
            Some("\"99999999999\" is outside -2147483648..=2147483647; try again.\n")
        );
        assert!(
            lines
                .next()
                .expect("fourth ask")
                .starts_with("Enter maximum value: ")
        );
    }

    /// min > max is caught right after the maximum is given (or the minimum, when the
    /// maximum came from a flag), and a negative count or delay right after it is given;
    /// each is asked again, not the whole request.
    #[test]
    fn answers_are_checked_as_they_are_given() {
        let (request, shown) = complete(
            Choices::default(),
            "10
5
10
-1
3
-5
0
",
        );
        assert_eq!(
            request,
            Some(pb::RandomNumberRequest {
                min: 10,
                max: 10,
                count: 3,
                delay: 0
            })
        );
        assert!(
            shown.contains(
                "Enter maximum value: the maximum must not be below the minimum (10); try again.\n\
                 Enter maximum value: Enter how many"
            ),
            "{shown}"
        );
        assert!(
            shown.contains("the count must not be negative; try again.\n"),
            "{shown}"
        );
        assert!(
            shown.contains("the delay must not be negative; try again.\n"),
            "{shown}"
        );
        let given = Choices {
            max: Some(3),
            ..Choices::default()
        };
        let (_, shown) = complete(
            given, "4
",
        );
        assert!(
            shown.contains("the minimum must not be above the maximum (3); try again."),
            "{shown}"
        );
    }

    /// Flags that contradict each other are refused before anything is asked.
    #[test]
    fn contradicting_flags_are_refused_up_front() {
        let given = |min, max, count| Choices {
            min: Some(min),
            max: Some(max),
            count: Some(count),
            delay: None,
        };
        assert_eq!(check_given(given(1, 10, 5)), Ok(()));
        assert_eq!(
            check_given(given(10, 1, 5)),
            Err("--min 10 is greater than --max 1".to_owned())
        );
        assert_eq!(
            check_given(given(1, 10, -5)),
            Err("--count -5 is negative".to_owned())
        );
    }

    /// End of input at any prompt ends quietly with no request.
    #[test]
    fn end_of_input_gives_no_request() {
        assert_eq!(
            complete(Choices::default(), ""),
            (
                None,
                "Random Number Streaming Client\n-----------------------------\n\
                 Enter minimum value: \n"
                    .into()
            )
        );
        let (request, shown) = complete(Choices::default(), "1\n2\nnope\n");
        assert_eq!(request, None);
        assert!(
            shown.ends_with("try again.\nEnter how many numbers to generate: \n"),
            "{shown}"
        );
    }

    fn response(sequence: i32, number: i32) -> pb::RandomNumberResponse {
        pb::RandomNumberResponse {
            number,
            sequence,
            timestamp: "14:25:30.123".into(),
        }
    }

    /// Everyday ranges print exactly the old script's header, rule and centred rows.
    #[test]
    fn everyday_table_matches_the_old_script() {
        let table = Table::for_request(&pb::RandomNumberRequest {
            min: 1,
            max: 100,
            count: 10,
            delay: 0,
        });
        assert_eq!(table.header(), "Sequence | Number | Timestamp");
        assert_eq!(table.rule(), "-".repeat(35));
        assert_eq!(
            table.row(&response(1, 42)),
            "   1     |   42   | 14:25:30.123"
        );
        assert_eq!(
            table.row(&response(10, 100)),
            "   10    |  100   | 14:25:30.123"
        );
    }

    /// Wide values widen their column, and every row still lines up with the header.
    #[test]
    fn wide_values_stay_aligned() {
        let table = Table::for_request(&pb::RandomNumberRequest {
            min: i32::MIN,
            max: i32::MAX,
            count: 1_000_000_000,
            delay: 0,
        });
        let header = table.header();
        let bars =
            |line: &str| -> Vec<usize> { line.match_indices('|').map(|(at, _)| at).collect() };
        for row in [
            table.row(&response(1, i32::MIN)),
            table.row(&response(1_000_000_000, i32::MAX)),
            table.row(&response(7, 0)),
        ] {
            assert_eq!(bars(&row), bars(&header), "{row}\n{header}");
            assert_eq!(row.len(), table.rule().len(), "{row}");
        }
        assert_eq!(table.header(), " Sequence  |   Number    | Timestamp");
    }
}
