/* kvm-probe: a tiny PVH guest that proves an accelerator runs guest code through the 32-bit → long-mode switch Linux makes; markers go to debugcon (0x402), the verdict to isa-debug-exit (0xf4). */

/*
 * How it is run (src/qemu/kvm-probe.ts):
 *   qemu-system-x86_64 -machine q35,accel=kvm -cpu host -m 32M -kernel kvm-probe.elf \
 *     -debugcon stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 -no-reboot ...
 * QEMU sees the PVH ELF note below (the same one Linux's vmlinux carries), loads the PT_LOAD
 * segment at 1 MiB and has its pvh.bin option ROM enter pvh_start in 32-bit protected mode with
 * flat segments and paging off (the PVH boot ABI; %ebx points at hvm_start_info, unused here).
 *
 * Markers on the debug console, in order: "P32\n" (32-bit code runs), "P64\n" (long mode
 * reached), "OK\n" (checks in long mode passed). Then it writes EXIT_OK to isa-debug-exit, and
 * QEMU exits with status (EXIT_OK << 1) | 1 = 85. A failed check prints "FAIL <what>\n" and exits
 * with (EXIT_FAIL << 1) | 1 = 43. Keep these numbers in step with src/qemu/kvm-probe.ts.
 */

#define DEBUGCON_PORT 0x402
#define EXIT_PORT     0xf4
#define EXIT_OK       0x2a
#define EXIT_FAIL     0x15
#define MSR_EFER      0xc0000080
#define EFER_LME      0x100   /* bit 8: long mode enable */
#define EFER_LMA      0x400   /* bit 10: long mode active (set by the CPU) */
#define CR4_PAE       0x20
#define CR0_PE_PG     0x80000001
#define PTE_P_RW      0x3     /* present, writable */
#define PDE_2M        0x83    /* present, writable, 2 MiB page */
#define ALIAS_GIB     0x40000000 /* PDPT[1] maps virtual 1 GiB.. onto the same physical first GiB */
#define CHECK_ADDR    0x400000   /* 4 MiB: inside -m 32M, away from the image at 1 MiB */

/* ---------------------------------------------------------------------------------------------
 * PVH entry note: XEN_ELFNOTE_PHYS32_ENTRY (type 18), name "Xen". In an ELF64 QEMU reads the
 * descriptor as 64 bits, so it is a .quad; 4-byte alignment keeps the descriptor right after the
 * 4-byte name, where QEMU looks for it. */
	.section .note.Xen, "a", @note
	.balign 4
	.long 4               /* n_namesz: "Xen\0" */
	.long 8               /* n_descsz */
	.long 18              /* n_type: XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.quad pvh_start
	.balign 4

/* ---------------------------------------------------------------------------------------------
 * 32-bit protected mode, paging off. */
	.text
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	movl $stack_top, %esp
	movl $msg_p32, %esi
	call puts32

	/* Zero PML4, PDPT and PD (three 4 KiB pages in .bss). */
	movl $pml4, %edi
	xorl %eax, %eax
	movl $(3 * 4096 / 4), %ecx
	rep stosl

	/* PML4[0] → PDPT; PDPT[0] and PDPT[1] → the same PD, so virtual 0 and virtual 1 GiB both
	 * map physical 0 (the alias is checked in long mode); PD: 512 × 2 MiB identity pages. */
	movl $(pdpt + PTE_P_RW), pml4
	movl $(pd + PTE_P_RW), pdpt
	movl $(pd + PTE_P_RW), pdpt + 8
	movl $pd, %edi
	movl $PDE_2M, %eax
	movl $512, %ecx
1:	movl %eax, (%edi)
	addl $0x200000, %eax
	addl $8, %edi
	loop 1b

	/* The mode switch, in the order Linux's startup_32 does it: GDT, CR4.PAE, CR3, EFER.LME, CR0.PG. */
	lgdt gdt_desc
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	orl $CR0_PE_PG, %eax
	movl %eax, %cr0
	ljmp $0x08, $long_mode

/* Writes the NUL-terminated string at %esi to the debug console. */
puts32:
	movw $DEBUGCON_PORT, %dx
1:	lodsb
	testb %al, %al
	jz 2f
	outb %al, %dx
	jmp 1b
2:	ret

/* ---------------------------------------------------------------------------------------------
 * 64-bit long mode. */
	.code64
long_mode:
	movl $0x10, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	movq $stack_top, %rsp
	leaq msg_p64(%rip), %rsi
	call puts64

	/* The CPU says long mode is active. */
	movl $MSR_EFER, %ecx
	rdmsr
	testl $EFER_LMA, %eax
	jz fail_lma

	/* CPUID (an exit to the hypervisor) answers, and reports long mode (leaf 0x80000001, EDX bit 29). */
	movl $0x80000001, %eax
	xorl %ecx, %ecx
	cpuid
	btl $29, %edx
	jnc fail_cpuid

	/* Paging translates: a store through the 1 GiB alias is read back at the identity address. */
	movabsq $0x5a17c0de0badf00d, %rax
	movq $(ALIAS_GIB + CHECK_ADDR), %rdi
	movq %rax, (%rdi)
	movq CHECK_ADDR, %rbx
	cmpq %rax, %rbx
	jne fail_mem
	notq %rax
	movq %rax, CHECK_ADDR
	cmpq %rax, (%rdi)
	jne fail_mem

	leaq msg_ok(%rip), %rsi
	call puts64
	movl $EXIT_OK, %eax
	jmp exit64

fail_lma:
	leaq msg_fail_lma(%rip), %rsi
	jmp fail64
fail_cpuid:
	leaq msg_fail_cpuid(%rip), %rsi
	jmp fail64
fail_mem:
	leaq msg_fail_mem(%rip), %rsi
fail64:
	call puts64
	movl $EXIT_FAIL, %eax

/* isa-debug-exit ends QEMU; without that device, halt for good. */
exit64:
	movw $EXIT_PORT, %dx
	outl %eax, %dx
1:	cli
	hlt
	jmp 1b

/* Writes the NUL-terminated string at %rsi to the debug console. */
puts64:
	movw $DEBUGCON_PORT, %dx
1:	lodsb
	testb %al, %al
	jz 2f
	outb %al, %dx
	jmp 1b
2:	ret

/* ---------------------------------------------------------------------------------------------
 * Data. */
	.section .rodata
	.balign 8
gdt:
	.quad 0                      /* null */
	.quad 0x00af9a000000ffff     /* 0x08: 64-bit code, present, DPL 0 */
	.quad 0x00cf92000000ffff     /* 0x10: flat data, present, writable */
gdt_end:
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

msg_p32:        .asciz "P32\n"
msg_p64:        .asciz "P64\n"
msg_ok:         .asciz "OK\n"
msg_fail_lma:   .asciz "FAIL lma\n"
msg_fail_cpuid: .asciz "FAIL cpuid\n"
msg_fail_mem:   .asciz "FAIL mem\n"

	.bss
	.balign 4096
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4096
	.skip 4096
stack_top:

	.section .note.GNU-stack, "", @progbits
