mod engine;
mod models;
mod tokenizer;
mod util;
