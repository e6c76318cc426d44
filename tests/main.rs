mod engine;
mod gemma3;
mod models;
mod run;
mod server;
mod tokenizer;
mod util;
