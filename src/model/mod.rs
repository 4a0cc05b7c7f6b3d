//! EchoCLIP in tch: the open_clip ConvNeXt CLIP (Christensen et al., "Vision–language foundation
//! model for echocardiogram interpretation", Nature Medicine 2024; reference: open_clip's
//! `CLIP` with a timm `convnext_base` trunk). Inference only.
//!
//! - [`config`]: `open_clip_config.json`, with the timm ConvNeXt variants.
//! - [`weights`]: state-dict loading (`.bin` torch zip or `.safetensors`) with shape checks;
//!   [`torch_zip`] reads `torch.save` files, with the strict unpickler [`torch_pickle`].
//! - [`convnext`]: the image tower; [`text`]: the text tower; [`clip`]: both, and the snapshot loader.
//! - [`batches`]: forward passes in batches that halve when LibTorch fails (out of memory).

pub mod batches;
pub mod clip;
pub mod config;
pub mod convnext;
pub mod text;
pub mod torch_pickle;
pub mod torch_zip;
pub mod train;
pub mod weights;

pub use clip::{Clip, Precision};
pub use config::ClipConfig;
