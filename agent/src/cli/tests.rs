//! Every malformed command-line value of every subcommand, parsed with
//! `Cli::try_parse_from`: no root, no BPF, so these run in every
//! `cargo test`. Each case starts from a command line that parses and
//! breaks one value, so an error can only come from that value.

use clap::{Parser as _, error::ErrorKind};

use super::{Cli, Command, Record};

/// Parses `args` (without the program name).
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("qprof").chain(args.iter().copied()))
}

/// Asserts that `args` fail with `kind` and that the rendered error
/// contains every needle (the flag and the problem).
fn assert_error(args: &[&str], kind: ErrorKind, needles: &[&str]) {
    let err = match parse(args) {
        Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
        Err(err) => err,
    };
    let text = err.render().to_string();
    assert_eq!(err.kind(), kind, "{args:?}: {text}");
    for needle in needles {
        assert!(
            text.contains(needle),
            "{args:?}: expected {needle:?} in {text:?}"
        );
    }
}

/// Replaces the value after `flag` in `base` (or appends `flag value`).
fn with(base: &[&'static str], flag: &'static str, value: &'static str) -> Vec<&'static str> {
    let mut args = base.to_vec();
    match args.iter().position(|a| *a == flag) {
        Some(i) => args[i + 1] = value,
        None => args.extend([flag, value]),
    }
    args
}

const CPU: &[&str] = &["record", "cpu", "--duration", "1s", "--hz", "99"];
const OFFCPU: &[&str] = &["record", "offcpu", "--duration", "1s"];
const MEMORY: &[&str] = &["record", "memory", "--pid", "1", "--duration", "1s"];
const QUERIES: &[&str] = &["record", "queries", "--duration", "1s", "--top", "5"];
const SYSCALLS: &[&str] = &["record", "syscalls", "--duration", "1s", "--top", "5"];
const TCP: &[&str] = &["record", "tcp", "--duration", "1s"];

/// The base command lines parse, so each broken variant below fails only
/// because of the value it breaks.
#[test]
fn base_command_lines_parse() {
    for base in [CPU, OFFCPU, MEMORY, QUERIES, SYSCALLS, TCP] {
        parse(base).unwrap_or_else(|e| panic!("{base:?}: {}", e.render()));
    }
    let cli = parse(&["flamegraph", "in.pb.gz", "--query", "00112233AABBCCDD"])
        .unwrap_or_else(|e| panic!("{}", e.render()));
    match cli.command {
        Command::Flamegraph(args) => {
            assert_eq!(args.query.as_deref(), Some("00112233aabbccdd"));
        }
        other => panic!("{other:?}"),
    }
}

/// Bad durations on every subcommand that takes one name `--duration`
/// and say what a good one looks like.
#[test]
fn bad_durations() {
    let cases = [
        ("0", "must be at least 1ms"),
        ("0s", "must be at least 1ms"),
        ("soon", "expected a number and a unit"),
        ("10parsecs", "expected a number and a unit"),
        ("-5s", "expected a number and a unit"),
        ("", "expected a number and a unit"),
        ("9999h", "at most 7 days"),
    ];
    for base in [CPU, OFFCPU, MEMORY, QUERIES, SYSCALLS, TCP] {
        for (value, problem) in cases {
            let mut args = base.to_vec();
            let i = args.iter().position(|a| *a == "--duration").unwrap_or(0);
            args.remove(i + 1);
            let joined = format!("--duration={value}");
            args[i] = &joined;
            assert_error(
                &args,
                ErrorKind::ValueValidation,
                &[
                    "--duration",
                    &format!("invalid duration '{value}'"),
                    problem,
                ],
            );
        }
    }
}

/// `--hz` must be a positive integer.
#[test]
fn bad_sampling_rates() {
    assert_error(
        &with(CPU, "--hz", "0"),
        ErrorKind::ValueValidation,
        &["--hz", "at least 1"],
    );
    for value in ["lots", "-1", "9.5", "99999999999999999999999"] {
        let flag = format!("--hz={value}");
        let mut args = CPU.to_vec();
        args.truncate(4);
        args.push(&flag);
        assert_error(
            &args,
            ErrorKind::ValueValidation,
            &[
                "--hz",
                &format!("invalid --hz '{value}'"),
                "positive integer",
            ],
        );
    }
}

/// `--pid` must be a positive integer that fits a pid, on every subcommand.
#[test]
fn bad_pids() {
    for base in [CPU, OFFCPU, MEMORY, QUERIES, SYSCALLS, TCP] {
        for value in ["0", "abc", "-3", "4294967296", "12x"] {
            let flag = format!("--pid={value}");
            let mut args: Vec<&str> = base.iter().copied().filter(|a| *a != "--pid").collect();
            // MEMORY's "1" after a removed --pid would become a stray value.
            if base == MEMORY {
                args.retain(|a| *a != "1");
            }
            args.push(&flag);
            assert_error(
                &args,
                ErrorKind::ValueValidation,
                &[
                    "--pid",
                    &format!("invalid pid '{value}'"),
                    "positive integer",
                ],
            );
        }
    }
}

/// `record memory` needs a target: no `--pid` is a missing-argument error
/// naming it.
#[test]
fn memory_requires_pid() {
    assert_error(
        &["record", "memory", "--duration", "1s"],
        ErrorKind::MissingRequiredArgument,
        &["--pid <PID>", "required"],
    );
}

/// `--sample-bytes`: zero, unknown suffixes and absurd sizes.
#[test]
fn bad_sample_bytes() {
    let cases = [
        ("0", "must be at least 1"),
        ("0K", "must be at least 1"),
        ("12X", "expected a number of bytes"),
        ("lots", "expected a number of bytes"),
        ("2048G", "at most 1T"),
        ("99999999999999999999", "expected a number of bytes"),
    ];
    for (value, problem) in cases {
        assert_error(
            &with(MEMORY, "--sample-bytes", value),
            ErrorKind::ValueValidation,
            &[
                "--sample-bytes",
                &format!("invalid --sample-bytes '{value}'"),
                problem,
            ],
        );
    }
}

/// `--top` must be at least 1, on both table commands.
#[test]
fn bad_top() {
    for base in [QUERIES, SYSCALLS] {
        for value in ["0", "ten", "-1"] {
            let flag = format!("--top={value}");
            let mut args = base.to_vec();
            args.truncate(4);
            args.push(&flag);
            assert_error(
                &args,
                ErrorKind::ValueValidation,
                &[
                    "--top",
                    &format!("invalid --top '{value}'"),
                    "positive integer",
                ],
            );
        }
    }
}

/// `--min-block`: garbage and negative values.
#[test]
fn bad_min_block() {
    for value in ["fast", "-1us", "1x", "10 parsecs"] {
        let flag = format!("--min-block={value}");
        let mut args = OFFCPU.to_vec();
        args.push(&flag);
        assert_error(
            &args,
            ErrorKind::ValueValidation,
            &["--min-block", &format!("invalid --min-block '{value}'")],
        );
    }
}

/// `--comm`: empty, longer than the kernel keeps, or with a '/'.
#[test]
fn bad_comm() {
    for value in ["", "a-name-of-16-chr", "usr/bin"] {
        let flag = format!("--comm={value}");
        let mut args = SYSCALLS.to_vec();
        args.push(&flag);
        assert_error(
            &args,
            ErrorKind::ValueValidation,
            &[
                "--comm",
                &format!("invalid --comm '{value}'"),
                "1 to 15 bytes",
            ],
        );
    }
}

/// `flamegraph --query` takes a 16-hex-digit fingerprint id; the input
/// file is required.
#[test]
fn bad_flamegraph_arguments() {
    for value in ["123", "zzzzzzzzzzzzzzzz", "00112233aabbccdd00", "select 1"] {
        assert_error(
            &["flamegraph", "in.pb.gz", "--query", value],
            ErrorKind::ValueValidation,
            &[
                "--query",
                &format!("invalid --query '{value}'"),
                "16 hex digits",
            ],
        );
    }
    assert_error(
        &["flamegraph"],
        ErrorKind::MissingRequiredArgument,
        &["<INPUT>", "required"],
    );
}

/// Unknown subcommands and flags are named, with a suggestion when one
/// is close.
#[test]
fn unknown_subcommands_and_flags() {
    assert_error(
        &["frobnicate"],
        ErrorKind::InvalidSubcommand,
        &["unrecognized subcommand 'frobnicate'"],
    );
    assert_error(
        &["record", "gpu"],
        ErrorKind::InvalidSubcommand,
        &["unrecognized subcommand 'gpu'"],
    );
    assert_error(
        &["recrod", "cpu"],
        ErrorKind::InvalidSubcommand,
        &["unrecognized subcommand 'recrod'", "record"],
    );
    assert_error(
        &["record", "cpu", "--frequency", "99"],
        ErrorKind::UnknownArgument,
        &["unexpected argument '--frequency'"],
    );
    assert_error(
        &["record", "cpu", "--durationn", "1s"],
        ErrorKind::UnknownArgument,
        &["unexpected argument '--durationn'", "--duration"],
    );
    // A flag's value missing at the end of the line.
    assert_error(
        &["record", "cpu", "--hz"],
        ErrorKind::InvalidValue,
        &["--hz <HZ>", "value is required"],
    );
}

/// With no subcommand (or `record` alone) qprof prints help and fails
/// rather than doing something by default.
#[test]
fn missing_subcommand() {
    for args in [&[][..], &["record"][..]] {
        let err = parse(args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} parsed"));
        assert_eq!(
            err.kind(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
            "{args:?}"
        );
        assert!(
            err.render().to_string().contains("Usage: qprof"),
            "{args:?}"
        );
    }
    // And `record cpu` alone is complete: every value has a default.
    assert!(matches!(
        parse(&["record", "cpu"]).map(|c| c.command),
        Ok(Command::Record(Record::Cpu(_)))
    ));
}
