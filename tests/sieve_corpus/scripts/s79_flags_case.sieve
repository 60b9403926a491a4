require ["imap4flags", "fileinto"];
addflag "\\seen";
addflag "\\SEEN $Label $label";
removeflag "$LABEL";
addflag "\\Answered";
fileinto "F";
