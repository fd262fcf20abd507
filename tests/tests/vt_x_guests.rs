//! VT-x under Bochs (corei7_skylake_x: EPT, unrestricted guest, VPID, preemption
//! timer): the same eight tiny guests, through the same core, with the same answers as
//! on AMD-V. One Bochs run covers every behaviour: Bochs is slow.

use tests::*;

#[test]
fn tiny_guests_run_isolated_under_vt_x() {
    let out = boot_bochs(
        "vt_x_guests",
        GuestSet::Tiny,
        &BochsOptions::default(),
        "hv: stopping with status",
        BOCHS_LIMIT,
    );
    out.expect_line("extension: VT-x");
    expect_tiny_guests(&out);
}
