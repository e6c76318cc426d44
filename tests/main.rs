mod engine;
mod gemma3;
mod models;
mod run;
mod scoring;
mod server;
mod tokenizer;
mod util;
