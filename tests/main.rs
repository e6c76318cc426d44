mod engine;
mod gemma3;
mod models;
mod tokenizer;
mod tools;
mod util;
