mod engine;
mod gemma3;
mod models;
mod moe;
mod moe_gen;
mod tokenizer;
mod util;
