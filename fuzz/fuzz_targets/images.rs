//! Guest images (the `guest_image` crate): every format's parser and planner on
//! arbitrary bytes, with an arbitrary format, command line, image path, modules and
//! RAM size. The planner must answer with a plan or an error, never panic, and every
//! plan must lie inside the RAM it was made for (the kernel copies it unchecked).
#![no_main]

use bundle::{ImageFormat, Module};
use guest_image::{plan_request, BootRequest, PAGE_TABLES_GPA};
use libfuzzer_sys::fuzz_target;

/// RAM sizes worth trying: tiny, around the usual boot areas, typical VMs, huge.
const RAMS: [u64; 8] = [
    0,
    0x8000,
    0xA_0000,
    0x10_0000,
    16 << 20,
    64 << 20,
    (4 << 30) + 4096,
    64 << 30,
];

fuzz_target!(|data: &[u8]| {
    // Header: format, RAM choice, command-line and path lengths, module count; the
    // rest is split into image, command line, path and modules.
    let Some((&[fmt, ram_sel, cmd_len, path_len, mods], rest)) = data.split_first_chunk::<5>()
    else {
        return;
    };
    let format = ImageFormat::from_u8(fmt % 4).unwrap_or(ImageFormat::Auto);
    let ram = RAMS[(ram_sel & 7) as usize] + u64::from(ram_sel >> 3) * 0x1_0000;
    let (cmd, rest) = rest.split_at(usize::from(cmd_len).min(rest.len()));
    let (path, rest) = rest.split_at(usize::from(path_len).min(rest.len()));
    let cmdline = core::str::from_utf8(cmd).unwrap_or("");
    let image_path = core::str::from_utf8(path).unwrap_or("");
    // Up to 3 modules cut from the end; the image is what remains.
    let mut image = rest;
    let mut modules = Vec::new();
    for i in 0..(mods % 4) {
        let take = (image.len() / 4).min(usize::from(mods >> 2) * 64 + usize::from(i));
        let (head, tail) = image.split_at(image.len() - take);
        modules.push(Module {
            data: tail,
            cmdline: "m",
        });
        image = head;
    }
    let req = BootRequest {
        image,
        image_path,
        format,
        cmdline,
        modules: &modules,
        ram,
    };
    if let Ok(plan) = plan_request(&req) {
        for s in &plan.segments {
            assert!(s.data.len() as u64 <= s.mem_len.max(s.data.len() as u64));
            assert!(s.gpa + s.mem_len.max(s.data.len() as u64) <= ram);
        }
        for (gpa, bytes) in &plan.extra {
            assert!(gpa + bytes.len() as u64 <= ram);
        }
        if let Some(t) = &plan.page_tables {
            assert!(PAGE_TABLES_GPA + t.len() as u64 * 4096 <= ram);
        }
    }
    // The detection alone, and the least-RAM search on small inputs (it plans
    // about 25 times).
    let _ = guest_image::detect(image, ImageFormat::Auto);
    if image.len() < 4096 {
        if let Ok(least) = guest_image::min_ram(&req) {
            assert!(plan_request(&BootRequest { ram: least, ..req }).is_ok());
        }
    }
});
