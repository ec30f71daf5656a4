from llava_doctor.cli import main

main(prog_name="llava-doctor")
