//! Commands: a worker owns named commands, and the runtime dispatches requests to them.
//!
//! A `catalog` worker registers five commands with discovery metadata, and the example:
//!
//! - prints each command's [`CommandInfo`](workerkit_core::command::CommandInfo) as JSON (the Go
//!   shape, with its snake_case `payload_kind`);
//! - dispatches before the runtime started: the rejection hands the request back, metadata and
//!   all, and the same request is dispatched again once the runtime runs;
//! - sends and receives typed JSON with [`json_handler`] and `json_payload`;
//! - shows that an absent payload and a JSON `null` are different requests;
//! - shows a bad payload failing with the public code `invalid_payload` (never retried), a
//!   handler's own public code, and the private cause staying out of status;
//! - prints the stable code of every kind of rejection: invalid target, unknown worker or
//!   command, invalid command name, and a draining worker.
//!
//! Run with: `cargo run -p example-commands`

use std::error::Error;
use std::io;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use workerkit_core::command::{DispatchError, json_handler};
use workerkit_core::failure::{self, BoxError};
use workerkit_core::retry::permanent;
use workerkit_core::{
    CommandRequest, CommandResponse, CommandSpec, Runtime, WorkerSpec, handler_fn, worker_fn,
};

/// What `price/quote` takes.
#[derive(Debug, Serialize, Deserialize)]
struct QuoteRequest {
    sku: String,
    quantity: u32,
}

/// What `price/quote` returns.
#[derive(Debug, Serialize, Deserialize)]
struct Quote {
    sku: String,
    quantity: u32,
    total_cents: u64,
}

/// What `search` takes, if anything.
#[derive(Debug, Deserialize)]
struct SearchFilter {
    prefix: String,
}

/// The catalogue: SKU and unit price in cents.
const PRICES: [(&str, u64); 3] = [
    ("tea-earl-grey", 450),
    ("tea-sencha", 620),
    ("coffee-mocha", 780),
];

/// Prices a quote; an unknown SKU is a permanent failure with its own public code.
async fn quote(request: QuoteRequest) -> Result<Quote, BoxError> {
    let Some((_, unit)) = PRICES.iter().find(|(sku, _)| *sku == request.sku) else {
        let cause = io::Error::other(format!("no row for {:?} in prices", request.sku));
        // Asking again will not make the SKU exist: never retry it.
        return Err(permanent(failure::with_failure(
            cause,
            "unknown_sku",
            "unknown SKU",
        )));
    };
    Ok(Quote {
        total_cents: unit * u64::from(request.quantity),
        sku: request.sku,
        quantity: request.quantity,
    })
}

/// The `catalog` worker: nothing to run by itself, five commands.
fn catalog() -> WorkerSpec {
    WorkerSpec::new("catalog", worker_fn(|_ctx| async { Ok(()) }))
        .description("answers price and stock questions")
        .command(
            CommandSpec::new(
                "ping",
                handler_fn(|ctx| async move {
                    Ok(CommandResponse::message(format!(
                        "pong (attempt {})",
                        ctx.attempt()
                    )))
                }),
            )
            .description("checks that the worker answers"),
        )
        .command(
            // Typed in, typed out: the payload is decoded into `QuoteRequest` and the `Quote` is
            // encoded as the response payload.
            CommandSpec::new(
                "price/quote",
                json_handler(|_ctx, request: QuoteRequest| quote(request)),
            )
            .description("prices a quantity of one SKU")
            .payload_kind("quote_request")
            .idempotent(true)
            .attribute("currency", "EUR"),
        )
        .command(
            // `Option<T>` accepts an absent payload (and `null`) as `None`.
            CommandSpec::new(
                "search",
                json_handler(|_ctx, filter: Option<SearchFilter>| async move {
                    let prefix = filter.map(|f| f.prefix).unwrap_or_default();
                    let skus: Vec<&str> = PRICES
                        .iter()
                        .map(|(sku, _)| *sku)
                        .filter(|sku| sku.starts_with(&prefix))
                        .collect();
                    Ok::<_, BoxError>(skus)
                }),
            )
            .description("lists SKUs, optionally by prefix")
            .payload_kind("search_filter"),
        )
        .command(
            CommandSpec::new(
                "inspect",
                handler_fn(|ctx| async move {
                    let seen = match ctx.request().raw_payload() {
                        None => "no payload".to_owned(),
                        Some(Value::Null) => "an explicit null".to_owned(),
                        Some(value) => format!("the payload {value}"),
                    };
                    let trace = ctx.request().metadata_value("traceparent").unwrap_or("-");
                    Ok(CommandResponse::message(format!(
                        "got {seen} (traceparent {trace})"
                    )))
                }),
            )
            .description("says what it received"),
        )
        .command(
            CommandSpec::new(
                "cache/flush",
                handler_fn(|_ctx| async move {
                    // The cause holds a password; only the code and message are public.
                    let cause = io::Error::other("redis://admin:hunter2@cache:6379: READONLY");
                    Err(failure::with_failure(
                        cause,
                        "cache_read_only",
                        "the cache is read-only",
                    ))
                }),
            )
            .description("drops every cached price")
            .dangerous(true),
        )
}

/// Prints a dispatch error: its stable code, the public failure (admitted dispatches), or the
/// request handed back (rejections).
fn show_error(err: &DispatchError) {
    if let Some(request) = err.request() {
        println!(
            "   rejected: code={} (request handed back: {} {})",
            err.code(),
            request.worker(),
            request.name()
        );
    } else if let Some(failure) = err.failure() {
        println!(
            "   failed: code={} failure={} {:?}",
            err.code(),
            failure.code(),
            failure.message()
        );
    } else {
        println!("   error: code={}", err.code());
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let runtime = Runtime::builder("shop").build()?;
    runtime.register(catalog())?;

    println!("== discovery (sorted by name; empty fields omitted)");
    for info in runtime
        .commands("catalog")
        .ok_or("catalog is not registered")?
    {
        println!("   {}", serde_json::to_string(&info)?);
    }

    println!("== a rejection hands the request back");
    let request = CommandRequest::new("catalog", "inspect")
        .payload(json!({ "sku": "tea-sencha" }))
        .metadata(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
    let request = match runtime.dispatch(request).await {
        Ok(result) => return Err(format!("dispatched before start: {result:?}").into()),
        Err(err) => {
            show_error(&err);
            err.into_request()
                .ok_or("a rejection carries its request")?
        }
    };
    runtime.start_all().await?;
    let result = runtime.dispatch(request).await?;
    println!("   after start: {}", serde_json::to_string(&result)?);

    println!("== typed JSON in and out");
    let request = CommandRequest::new("catalog", "price/quote").json_payload(&QuoteRequest {
        sku: "tea-sencha".to_owned(),
        quantity: 3,
    })?;
    let result = runtime.dispatch(request).await?;
    let quote: Quote = result.result.json_payload()?;
    println!(
        "   {} x {}: {} cents (dispatch {})",
        quote.quantity, quote.sku, quote.total_cents, result.id
    );

    println!("== absent payload vs null");
    for request in [
        CommandRequest::new("catalog", "inspect"),
        CommandRequest::new("catalog", "inspect").payload(Value::Null),
    ] {
        let result = runtime.dispatch(request).await?;
        println!("   inspect: {}", result.result.message.unwrap_or_default());
    }
    for payload in [None, Some(json!({ "prefix": "tea" }))] {
        let label = if payload.is_some() {
            "prefix tea"
        } else {
            "absent"
        };
        let request = CommandRequest::new("catalog", "search").maybe_payload(payload);
        let result = runtime.dispatch(request).await?;
        println!(
            "   search ({label}): {}",
            result.result.payload.unwrap_or_default()
        );
    }

    println!("== failures: a public code, the cause kept private");
    let failing = [
        (
            "price/quote with a payload of the wrong shape",
            CommandRequest::new("catalog", "price/quote").payload(json!({ "sku": 42 })),
        ),
        (
            "price/quote with no payload",
            CommandRequest::new("catalog", "price/quote"),
        ),
        (
            "price/quote for an unknown SKU",
            CommandRequest::new("catalog", "price/quote")
                .payload(json!({ "sku": "tea-oolong", "quantity": 1 })),
        ),
        (
            "cache/flush (dangerous)",
            CommandRequest::new("catalog", "cache/flush"),
        ),
    ];
    for (what, request) in failing {
        println!(" - {what}");
        match runtime.dispatch(request).await {
            Ok(result) => println!("   unexpected success: {result:?}"),
            Err(err) => show_error(&err),
        }
    }
    let status = runtime
        .worker("catalog")
        .ok_or("catalog is not registered")?
        .status;
    println!(
        "   catalog lastCommandFailure: {}",
        serde_json::to_string(&status.last_command_failure)?
    );
    println!(
        "   catalog state: {} (a command failure is not a worker failure)",
        status.state
    );

    println!("== rejections and their codes");
    let rejected = [
        CommandRequest::new("Catalog", "ping"),
        CommandRequest::new("inventory", "ping"),
        CommandRequest::new("catalog", "price quote"),
        CommandRequest::new("catalog", "restock"),
        CommandRequest::new("other-shop/catalog", "ping"),
    ];
    for request in rejected {
        let target = format!("{} {}", request.worker(), request.name());
        match runtime.dispatch(request).await {
            Ok(result) => println!("   {target}: unexpected success: {result:?}"),
            Err(err) => println!("   {target:<26} -> {}", err.code()),
        }
    }
    runtime.drain("catalog").await?;
    match runtime
        .dispatch(CommandRequest::new("shop/catalog", "ping"))
        .await
    {
        Ok(result) => println!("   unexpected success: {result:?}"),
        Err(err) => println!(
            "   {:<26} -> {} ({err})",
            "(draining) catalog ping",
            err.code()
        ),
    }

    runtime.shutdown().await?;
    Ok(())
}
