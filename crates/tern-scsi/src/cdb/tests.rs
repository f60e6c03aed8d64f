use super::*;
use crate::sense::{Asc, SenseKey};

#[test]
fn every_table_entry_parses_when_zeroed() {
    for c in COMMANDS {
        let mut cdb = vec![0u8; c.usage.len()];
        cdb[0] = c.opcode;
        if let Some(sa) = c.service_action {
            cdb[1] = sa;
        }
        match c.opcode {
            op::MODE_SELECT_6 | op::MODE_SELECT_10 => cdb[1] |= 0x10,
            op::GET_EVENT_STATUS_NOTIFICATION => cdb[1] |= 1,
            op::REPORT_LUNS => cdb[9] = 16,
            _ => {}
        }
        assert!(parse(&cdb).is_ok(), "{}", c.name);
        // The mask and the opcode's own byte agree.
        assert_eq!(c.usage[0], 0xFF);
        assert_eq!(*c.usage.last().unwrap(), 0, "{}: control byte", c.name);
    }
}

#[test]
fn reserved_bits_point_at_the_field() {
    // READ(10) with RDPROTECT=001b (byte 1 bit 5).
    let e = parse(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
    assert_eq!(e, Sense::invalid_cdb(1, Some(5)));
    // The control byte's NACA bit.
    let e = parse(&[0x00, 0, 0, 0, 0, 0x04]).unwrap_err();
    assert_eq!(e, Sense::invalid_cdb(5, Some(2)));
}

#[test]
fn unknown_opcodes_and_service_actions() {
    let e = parse(&[0xC0, 0, 0, 0, 0, 0]).unwrap_err();
    assert_eq!(
        (e.key, e.asc),
        (
            SenseKey::IllegalRequest,
            Asc::INVALID_COMMAND_OPERATION_CODE
        )
    );
    assert_eq!(
        parse(&[]).unwrap_err().asc,
        Asc::INVALID_COMMAND_OPERATION_CODE
    );
    // SERVICE ACTION IN(16) with READ LONG's action.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x11;
    assert_eq!(parse(&cdb).unwrap_err(), Sense::invalid_cdb(1, Some(4)));
    // Cut short.
    assert_eq!(
        parse(&[0x28, 0, 0]).unwrap_err(),
        Sense::invalid_cdb(3, None)
    );
}

#[test]
fn fields_decode() {
    assert_eq!(
        parse(&[0x08, 0x1F, 0xFF, 0xFF, 0, 0]).unwrap(),
        Command::Read {
            lba: 0x1F_FFFF,
            blocks: 256,
            fua: false
        }
    );
    let mut c = [0u8; 16];
    c[0] = 0x8A;
    c[1] = 0x08;
    c[2..10].copy_from_slice(&0x1234_5678_9ABCu64.to_be_bytes());
    c[10..14].copy_from_slice(&7u32.to_be_bytes());
    assert_eq!(
        parse(&c).unwrap(),
        Command::Write {
            lba: 0x1234_5678_9ABC,
            blocks: 7,
            fua: true
        }
    );
    assert_eq!(
        parse(&[0x12, 0, 0x80, 0, 0xFF, 0]).unwrap_err(),
        Sense::invalid_cdb(2, None)
    );
    assert_eq!(
        parse(&[0x2F, 0x04, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err(),
        Sense::invalid_cdb(1, Some(2))
    );
    assert_eq!(
        parse(&[0x15, 0x01, 0, 0, 0, 0]).unwrap_err(),
        Sense::invalid_cdb(1, Some(4))
    );
    assert_eq!(
        parse(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]).unwrap_err(),
        Sense::invalid_cdb(6, None)
    );
    assert_eq!(
        parse(&[0x5F, 0x07, 0, 0, 0, 0, 0, 0, 24, 0]).unwrap_err(),
        Sense::invalid_cdb(1, Some(4))
    );
}
