mod engine;
mod gemma3;
mod models;
mod server;
mod tokenizer;
mod util;
