//! What `file_client` does. With no command it runs the old script's demo: hello as
//! "gRPC User", the server time, write `test.txt`, list the files. Each call is also a
//! subcommand. Results go to the given writer (stdout in the binary), errors to the caller.

use std::{io::Write, path::PathBuf};

use anyhow::Context as _;
use grpc_suite::{
    cli::{Connection, status_error},
    file as pb,
};
use pb::file_service_client::FileServiceClient;

/// The name the old demo greeted with.
pub const DEMO_NAME: &str = "gRPC User";
/// The file the old demo wrote, and its content.
pub const DEMO_FILE: (&str, &str) = ("test.txt", "Hello, this is a test file content!");

/// One call to the file service (the binary maps its subcommands onto these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Prints the server's greeting for `name`.
    Hello {
        /// Who to greet.
        name: String,
    },
    /// Prints the server's farewell for `name`.
    Goodbye {
        /// Who to bid farewell.
        name: String,
    },
    /// Prints the server's local time.
    Time,
    /// Uploads a local file (`-` reads standard input; then `store_as` is required).
    Write {
        /// The local file to send, or `-` for standard input.
        path: PathBuf,
        /// The name to store it under (default: the file name of `path`).
        store_as: Option<String>,
    },
    /// Lists the files stored on the server, one per line.
    List,
    /// Runs the old script's demo (the default with no command).
    Demo,
}

/// Runs one command against a connected server, printing its result to `out`.
pub async fn run(
    channel: impl Into<Connection>,
    command: Command,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    // Our own content limit is the server's to enforce; tonic's 4 MiB client default would
    // refuse larger files before the server could say what it accepts.
    let mut client = FileServiceClient::new(channel.into()).max_encoding_message_size(usize::MAX);
    match command {
        Command::Hello { name } => writeln!(out, "{}", hello(&mut client, name).await?)?,
        Command::Goodbye { name } => {
            let request = pb::GoodbyeRequest { name };
            let reply = client
                .say_goodbye(request)
                .await
                .map_err(status_error)?
                .into_inner();
            writeln!(out, "{}", reply.message)?;
        }
        Command::Time => writeln!(out, "{}", server_time(&mut client).await?)?,
        Command::Write { path, store_as } => {
            let (filename, content) = read_upload(&path, store_as).await?;
            let reply = write_file(&mut client, filename, content).await?;
            writeln!(out, "{} ({})", reply.message, reply.file_path)?;
        }
        Command::List => {
            for name in list_files(&mut client).await? {
                writeln!(out, "{name}")?;
            }
        }
        Command::Demo => {
            // The old script's lines, word for word: scripts parse them.
            let greeting = hello(&mut client, DEMO_NAME.to_owned()).await?;
            writeln!(out, "Greeter client received: {greeting}")?;
            writeln!(out, "Server time: {}", server_time(&mut client).await?)?;
            let (name, content) = DEMO_FILE;
            let reply =
                write_file(&mut client, name.to_owned(), content.as_bytes().to_vec()).await?;
            writeln!(out, "File write response: {}", reply.message)?;
            writeln!(out, "File path: {}", reply.file_path)?;
            writeln!(out, "Files in upload directory:")?;
            for name in list_files(&mut client).await? {
                writeln!(out, "- {name}")?;
            }
        }
    }
    Ok(())
}

async fn hello(client: &mut FileServiceClient<Connection>, name: String) -> anyhow::Result<String> {
    let reply = client
        .say_hello(pb::HelloRequest { name })
        .await
        .map_err(status_error)?;
    Ok(reply.into_inner().message)
}

async fn server_time(client: &mut FileServiceClient<Connection>) -> anyhow::Result<String> {
    let reply = client
        .get_server_time(pb::Empty {})
        .await
        .map_err(status_error)?;
    Ok(reply.into_inner().timestamp)
}

async fn write_file(
    client: &mut FileServiceClient<Connection>,
    filename: String,
    content: Vec<u8>,
) -> anyhow::Result<pb::FileResponse> {
    let request = pb::FileRequest {
        filename,
        content: content.into(),
    };
    let reply = client
        .write_file(request)
        .await
        .map_err(status_error)?
        .into_inner();
    anyhow::ensure!(
        reply.success,
        "the server did not store the file: {}",
        reply.message
    );
    Ok(reply)
}

async fn list_files(client: &mut FileServiceClient<Connection>) -> anyhow::Result<Vec<String>> {
    let reply = client
        .get_files_list(pb::Empty {})
        .await
        .map_err(status_error)?;
    Ok(reply.into_inner().filenames)
}

/// The name and bytes to upload for `write PATH [--as NAME]`.
async fn read_upload(
    path: &std::path::Path,
    store_as: Option<String>,
) -> anyhow::Result<(String, Vec<u8>)> {
    if path.as_os_str() == "-" {
        let name = store_as
            .context("`write -` reads standard input and needs --as NAME to name the file")?;
        let mut content = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut content)
            .await
            .context("reading standard input")?;
        return Ok((name, content));
    }
    let content = tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let name = grpc_suite::cli::upload_name(path, store_as)?;
    Ok((name, content))
}
