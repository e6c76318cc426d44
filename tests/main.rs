mod engine;
mod gemma3;
mod models;
mod scoring;
mod server;
mod tokenizer;
mod util;
